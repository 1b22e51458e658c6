#COMMON#
# Erase (not upgrade): stop and disable. The state directory is kept (RPM has no purge).
if [ "$1" = 0 ]; then weir_stop_disable weir-aggregator; fi
