#COMMON#
weir_dirs /var/lib/weir-agent
if [ "$1" = 1 ]; then weir_enable weir-agent; else weir_restart_if_running weir-agent; fi
