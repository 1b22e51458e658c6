# Shared by the .deb and .rpm maintainer scripts (inlined into each by build.sh, so the
# installed scripts are self-contained). POSIX sh. Never touches /var/lib/weir-* (the queue,
# the store) except weir_purge_state, which only Debian's `purge` calls.

weir_user() {
    # The system user and group every Weir service runs as.
    getent group weir >/dev/null 2>&1 || groupadd --system weir
    getent passwd weir >/dev/null 2>&1 || useradd --system --gid weir --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin --comment "Weir event services" weir
}

weir_dirs() {
    # $1: the service's state directory (also created by systemd's StateDirectory=).
    install -d -m 0750 -o root -g weir /etc/weir
    install -d -m 0750 -o root -g weir /etc/weir/tls
    if [ ! -d "$1" ]; then install -d -m 0750 -o weir -g weir "$1"; fi
    # Configs may hold paths to secrets; readable by the service, not by everyone.
    for f in /etc/weir/agent.toml /etc/weir/aggregator.toml /etc/weir/rules.toml \
        /etc/weir/definitions.toml /etc/weir/transforms.toml; do
        if [ -f "$f" ]; then chgrp weir "$f" && chmod 0640 "$f"; fi
    done
    # An API key for the HTTP ingest / REST API, generated once, never replaced.
    if [ ! -e /etc/weir/api-key ]; then
        (umask 027 && od -An -N24 -tx1 /dev/urandom | tr -d ' \n' > /etc/weir/api-key && echo >> /etc/weir/api-key)
        chgrp weir /etc/weir/api-key
    fi
}

weir_enable() {
    # Enable at boot but do not start: the certificates are not there yet (README, enrolment).
    if command -v systemctl >/dev/null 2>&1; then
        if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
        systemctl enable "$1.service" >/dev/null 2>&1 || true
    fi
}

weir_restart_if_running() {
    # After an upgrade: restart a running service on the new binary. The queue/store stays.
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
        systemctl try-restart "$1.service" || true
    fi
}

weir_stop_disable() {
    if [ -d /run/systemd/system ]; then systemctl stop "$1.service" || true; fi
    if command -v systemctl >/dev/null 2>&1; then systemctl disable "$1.service" >/dev/null 2>&1 || true; fi
}

weir_purge_state() {
    # Debian `purge` only: the queue or event store goes. `remove` keeps it.
    rm -rf "$1"
}
