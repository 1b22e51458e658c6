#COMMON#
weir_dirs /var/lib/weir-aggregator
if [ "$1" = 1 ]; then weir_enable weir-aggregator; else weir_restart_if_running weir-aggregator; fi
