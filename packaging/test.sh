#!/usr/bin/env bash
# Package tests (issue 7): builds the four packages, checks their contents and metadata,
# installs the .debs ON THIS MACHINE (creates the weir user, writes /etc/weir, /var/lib/weir-*),
# enrols an agent, runs both services, upgrades with a non-empty queue and a changed conffile,
# then removes and purges. Run it in a throwaway container or CI machine, as root:
#
#   WEIR_PACKAGE_TESTS=1 packaging/test.sh            # build + test
#   WEIR_PACKAGE_TESTS=1 WEIR_SKIP_BUILD=1 packaging/test.sh   # reuse target/packages
#   WEIR_PACKAGE_TESTS=1 WEIR_PROFILE=dev packaging/test.sh    # package target/debug (CI)
#
# systemd is not PID 1 in a container, so the services are started the way their units start
# them: same binary, config and working paths, as the weir user with only
# CAP_NET_BIND_SERVICE (setpriv --ambient-caps), MALLOC_ARENA_MAX=1. The units themselves are
# checked with `systemd-analyze verify` and scored with `systemd-analyze security`.
# Tools: dpkg-deb, rpm (Debian's rpm package), systemd (systemd-analyze), curl, logger, setpriv.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${WEIR_PACKAGE_TESTS:-}" != 1 ] || [ "$(id -u)" != 0 ]; then
    echo "packaging/test.sh changes the system: run as root with WEIR_PACKAGE_TESTS=1 (in CI or a container)"
    exit 2
fi
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
pkgs="$target_dir/packages"
t0=$(date +%s)
step() { echo; echo "=== $* ($(( $(date +%s) - t0 ))s)"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
has() { grep -q -- "$2" <<<"$1" || fail "$3: expected to find '$2'"; }

for tool in dpkg-deb rpm systemd-analyze curl logger setpriv; do
    command -v "$tool" >/dev/null || fail "missing tool $tool (apt-get install -y rpm systemd curl bsdutils util-linux)"
done

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
if [ "${WEIR_SKIP_BUILD:-}" != 1 ]; then
    step "build revision 1 and 2 (same binaries, the upgrade test needs two versions)"
    rm -rf "$pkgs"
    if [ "${WEIR_PROFILE:-release}" = dev ]; then
        # CI: package the debug binaries the README's test command already built.
        packaging/build.sh --no-build
    else
        packaging/build.sh
    fi
    WEIR_DEB_REVISION=2 packaging/build.sh --no-build
fi
deb1_agent="$pkgs/weir-agent_${version}-1_amd64.deb"
deb2_agent="$pkgs/weir-agent_${version}-2_amd64.deb"
deb1_agg="$pkgs/weir-aggregator_${version}-1_amd64.deb"
deb2_agg="$pkgs/weir-aggregator_${version}-2_amd64.deb"

step "package contents and metadata (dpkg-deb -c -I, rpm -qpl -qpi)"
for f in "$deb1_agent" "$deb1_agg"; do [ -f "$f" ] || fail "$f not built"; done
c=$(dpkg-deb -c "$deb1_agent"); i=$(dpkg-deb -I "$deb1_agent")
for want in ./usr/bin/weir-agent ./etc/weir/agent.toml ./lib/systemd/system/weir-agent.service \
    ./usr/share/man/man1/weir-agent.1 ./usr/share/man/man1/weir-agent-enroll.1 \
    ./usr/share/bash-completion/completions/weir-agent; do has "$c" "$want" "weir-agent.deb contents"; done
has "$i" "Package: weir-agent" "weir-agent.deb info"
has "$i" "conffiles" "weir-agent.deb info"
has "$(dpkg-deb -f "$deb1_agent" Depends)" "passwd" "weir-agent Depends"
has "$(dpkg-deb -I "$deb1_agent" conffiles)" "/etc/weir/agent.toml" "weir-agent conffiles"
has "$(dpkg-deb -c "$deb1_agent" | grep etc/weir/agent.toml)" "-rw-r-----" "agent.toml mode 0640"
c=$(dpkg-deb -c "$deb1_agg")
for want in ./usr/bin/weir-aggregator ./usr/bin/weir-certs ./etc/weir/aggregator.toml \
    ./lib/systemd/system/weir-aggregator.service ./usr/share/man/man1/weir-certs-renew.1; do
    has "$c" "$want" "weir-aggregator.deb contents"; done
for f in aggregator rules definitions transforms; do
    has "$(dpkg-deb -I "$deb1_agg" conffiles)" "/etc/weir/$f.toml" "weir-aggregator conffiles"
done
for p in weir-agent weir-aggregator; do
    r=$(ls "$pkgs"/$p-"$version"-1.*.rpm)
    l=$(rpm -qpl "$r"); i=$(rpm -qpi "$r"); cf=$(rpm -qpc "$r"); s=$(rpm -qp --scripts "$r")
    has "$l" "/usr/bin/$p" "$p.rpm files"
    has "$l" "/usr/lib/systemd/system/$p.service" "$p.rpm files"
    has "$i" "Name        : $p" "$p.rpm info"
    has "$cf" "/etc/weir/" "$p.rpm config files"
    has "$s" "useradd --system" "$p.rpm scripts"
    echo "$p.rpm: $(wc -l <<<"$l") files, config: $cf"
done

step "rpm: install, upgrade and erase in a scratch root (rpm --root; --nodeps --noscripts, since Debian is not an rpm system)"
# What this proves: the payload unpacks with its modes, rpm -V finds every file intact, the
# binary from the rpm runs, and an upgrade keeps an operator-changed %config(noreplace) file.
# The scriptlets (useradd, systemctl) are checked with sh -n at build time and shared with the
# .deb's maintainer scripts, which the install below runs for real.
rroot=$(mktemp -d)
rpmq() { rpm --root "$rroot" "$@" 2> >(grep -v -e "should not be used" -e "know what you are doing" >&2); }
rpmq --initdb
for p in weir-agent weir-aggregator; do
    rpmq -i --nodeps --noscripts "$(ls "$pkgs"/$p-"$version"-1.*.rpm)"
    rpmq -V --nodeps "$p" || fail "rpm -V $p: installed files differ from the package"
    "$rroot/usr/bin/$p" --version | grep -q "$version" || fail "$p from the rpm does not run"
done
[ "$(stat -c %a "$rroot/etc/weir/agent.toml")" = 640 ] || fail "rpm agent.toml mode"
echo "# changed by the operator" >> "$rroot/etc/weir/agent.toml"
rpmq -U --nodeps --noscripts "$(ls "$pkgs"/weir-agent-"$version"-2.*.rpm)"
[ "$(rpmq -q weir-agent)" = "weir-agent-$version-2.x86_64" ] || fail "rpm upgrade did not happen: $(rpmq -q weir-agent)"
grep -q "changed by the operator" "$rroot/etc/weir/agent.toml" || fail "rpm upgrade replaced the changed agent.toml"
rpmq -e --nodeps --noscripts weir-agent weir-aggregator
[ ! -e "$rroot/usr/bin/weir-agent" ] || fail "rpm -e left /usr/bin/weir-agent"
[ -e "$rroot/etc/weir/agent.toml.rpmsave" ] || fail "rpm -e did not keep the changed config as .rpmsave"
rm -rf "$rroot"
echo "rpm install, -V, upgrade (config kept) and erase (config saved as .rpmsave) passed"

step "install revision 1 (after purging what an earlier run left)"
dpkg -P weir-agent weir-aggregator >/dev/null 2>&1 || true
rm -rf /etc/weir/ca /etc/weir/agent-tls /etc/weir/tls /etc/weir/api-key /tmp/paris-gw-01.bundle
dpkg -i "$deb1_agent" "$deb1_agg"
getent passwd weir >/dev/null || fail "no weir user"
[ "$(stat -c %a:%U:%G /etc/weir/tls)" = "750:root:weir" ] || fail "/etc/weir/tls is $(stat -c %a:%U:%G /etc/weir/tls)"
[ "$(stat -c %a:%G /etc/weir/agent.toml)" = "640:weir" ] || fail "agent.toml mode"
[ -s /etc/weir/api-key ] || fail "no API key generated"
[ -d /var/lib/weir-agent ] && [ -d /var/lib/weir-aggregator ] || fail "state dirs missing"
[ -L /etc/systemd/system/multi-user.target.wants/weir-agent.service ] || fail "weir-agent not enabled"
[ -L /etc/systemd/system/multi-user.target.wants/weir-aggregator.service ] || fail "weir-aggregator not enabled"
weir-agent --version; weir-aggregator --version; weir-certs --version
man -w weir-agent >/dev/null 2>&1 || [ -f /usr/share/man/man1/weir-agent.1 ] || fail "no man page"

step "check-config before enrolment fails, naming the missing certificate"
if out=$(weir-agent check-config /etc/weir/agent.toml 2>&1); then fail "agent check-config passed without certificates"; fi
echo "$out"; has "$out" "/etc/weir/tls/ca.pem" "agent check-config message"
if out=$(weir-aggregator check-config /etc/weir/aggregator.toml 2>&1); then fail "aggregator check-config passed without certificates"; fi
echo "$out"; has "$out" "/etc/weir/tls/" "aggregator check-config message"

step "systemd-analyze verify and security"
for u in weir-agent weir-aggregator; do
    systemd-analyze verify "/lib/systemd/system/$u.service"
    systemd-analyze security --offline=yes "/lib/systemd/system/$u.service" | tail -1
done

step "aggregator PKI (README: Install the aggregator)"
rm -rf /etc/weir/ca
weir-certs init --out /etc/weir/ca
weir-certs issue aggregator --ca /etc/weir/ca --dns localhost --ip 127.0.0.1 --out /etc/weir/tls
install -m 0644 /etc/weir/ca/crl.pem /etc/weir/tls/crl.pem
chown weir:weir /etc/weir/tls/aggregator.key
weir-aggregator check-config /etc/weir/aggregator.toml
# The installed rule, definition and transformation examples work once their keys are set.
sed -e 's/^# rules = "rules.toml"/rules = "rules.toml"/' \
    -e 's/^# definitions = /definitions = /' -e 's/^# transforms = /transforms = /' \
    /etc/weir/aggregator.toml > /etc/weir/aggregator-examples.toml
grep -q '^rules = "rules.toml"' /etc/weir/aggregator-examples.toml || fail "no rules key to uncomment"
out=$(weir-aggregator check-config /etc/weir/aggregator-examples.toml 2>&1) || fail "examples: $out"
echo "$out"; has "$out" "3 correlation rules, 1 aggregates" "check-config with the example rules"
rm /etc/weir/aggregator-examples.toml

step "enrolment (README: Install on a site gateway)"
weir-certs issue agent --ca /etc/weir/ca --site paris --name gw-01 --out /etc/weir/ca/agents/paris-gw-01 \
    --bundle /tmp/paris-gw-01.bundle
[ "$(stat -c %a /tmp/paris-gw-01.bundle)" = 600 ] || fail "bundle is not 0600"
# The agent gets its own TLS dir here because aggregator and agent share this test machine.
cp /etc/weir/agent.toml /tmp/agent.toml.orig
weir-agent enroll /tmp/paris-gw-01.bundle --tls-dir /etc/weir/agent-tls
[ "$(stat -c %a:%U /etc/weir/agent-tls/agent.key)" = "600:weir" ] || fail "agent.key mode/owner"
grep -q "^# Enrolled: agent paris/gw-01" /etc/weir/agent.toml || fail "enrol comment missing"
grep -q "^# The aggregator's QUIC listener" /etc/weir/agent.toml || fail "enrol lost the comments"
# The operator's change to the conffile (kept across the upgrade below).
sed -i 's/^addresses = .*/addresses = ["localhost:4433"]/' /etc/weir/agent.toml
weir-agent check-config /etc/weir/agent.toml

as_unit() { # name, args...: started like the unit, as weir with CAP_NET_BIND_SERVICE only
    local name=$1; shift
    # exec: the recorded pid is the service's own (signals go to it, as with MAINPID).
    (cd / && MALLOC_ARENA_MAX=1 exec setpriv --reuid weir --regid weir --init-groups \
        --inh-caps +net_bind_service --ambient-caps +net_bind_service --no-new-privs \
        "$@") >"/tmp/$name.log" 2>&1 &
    echo $! >"/tmp/$name.pid"
}
# Within the unit's TimeoutStopSec=30. (An agent stopped while a connection attempt to a
# down aggregator is pending takes up to the 10 s handshake timeout.)
stop() { local pid; pid=$(cat "/tmp/$1.pid"); kill -TERM "$pid"; for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done; fail "$1 did not stop within 30s"; }
wait_http() { for _ in $(seq 100); do curl -fsS "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done; fail "$1 not answering"; }
key=$(head -1 /etc/weir/api-key)
events() { curl -fsS -H "X-API-Key: $key" "http://127.0.0.1:8083/api/v1/events?limit=1000"; }
count() { events | grep -o "$1" | wc -l; }
queue_records() { curl -fsS http://127.0.0.1:8084/metrics | awk '/^weir_agent_queue_records /{print $2}'; }

step "run both services as their units would (no systemd PID 1 here)"
as_unit aggregator /usr/bin/weir-aggregator --config /etc/weir/aggregator.toml
wait_http http://127.0.0.1:8083/healthz
as_unit agent /usr/bin/weir-agent --config /etc/weir/agent.toml
wait_http http://127.0.0.1:8084/healthz
logger --udp -n 127.0.0.1 -P 514 -t pkgtest "weir-pkgtest-before-upgrade-1"
for _ in $(seq 100); do [ "$(count weir-pkgtest-before-upgrade-1)" -ge 1 ] && break; sleep 0.2; done
[ "$(count weir-pkgtest-before-upgrade-1)" -ge 1 ] || fail "event did not reach the aggregator: $(tail -5 /tmp/agent.log)"
echo "event from syslog on port 514 stored by the aggregator"

step "SIGHUP reloads instead of killing"
kill -HUP "$(cat /tmp/agent.pid)" "$(cat /tmp/aggregator.pid)"; sleep 1
kill -0 "$(cat /tmp/agent.pid)" && kill -0 "$(cat /tmp/aggregator.pid)" || fail "SIGHUP killed a service"
grep -q "SIGHUP: reload done" /tmp/agent.log || fail "agent did not log the reload"
grep -q "SIGHUP: reload done" /tmp/aggregator.log || fail "aggregator did not log the reload"

step "WAN outage: aggregator down, events queue up"
stop aggregator
for n in $(seq 1 20); do logger --udp -n 127.0.0.1 -P 514 -t pkgtest "weir-pkgtest-queued-$n"; done
for _ in $(seq 50); do [ "$(queue_records)" -ge 20 ] 2>/dev/null && break; sleep 0.2; done
q=$(queue_records); echo "agent queue: $q records"; [ "$q" -ge 20 ] || fail "queue did not fill"
stop agent
queue_sum=$(sha256sum /var/lib/weir-agent/queue.redb)

step "upgrade to revision 2 keeps the queue and the changed conffile"
dpkg -i "$deb2_agent" "$deb2_agg"
[ "$(dpkg-query -W -f '${Version}' weir-agent)" = "${version}-2" ] || fail "upgrade did not happen"
[ "$(sha256sum /var/lib/weir-agent/queue.redb)" = "$queue_sum" ] || fail "the upgrade changed the queue"
grep -q '^addresses = \["localhost:4433"\]' /etc/weir/agent.toml || fail "the upgrade replaced the changed conffile"
as_unit aggregator /usr/bin/weir-aggregator --config /etc/weir/aggregator.toml
wait_http http://127.0.0.1:8083/healthz
as_unit agent /usr/bin/weir-agent --config /etc/weir/agent.toml
for _ in $(seq 150); do [ "$(count weir-pkgtest-queued-)" -ge 20 ] && break; sleep 0.2; done
[ "$(count weir-pkgtest-queued-)" -ge 20 ] || fail "queued events lost across the upgrade ($(count weir-pkgtest-queued-)/20)"
echo "all 20 events queued during the outage arrived after the upgrade"
stop agent; stop aggregator

step "remove keeps state, purge removes it"
dpkg -r weir-agent weir-aggregator
[ -f /var/lib/weir-agent/queue.redb ] || fail "remove deleted the agent queue"
[ -f /var/lib/weir-aggregator/events.redb ] || fail "remove deleted the event store"
dpkg -P weir-agent weir-aggregator
[ ! -e /var/lib/weir-agent ] && [ ! -e /var/lib/weir-aggregator ] || fail "purge left state behind"
[ ! -e /etc/weir/agent.toml ] || fail "purge left the conffile"
rm -rf /etc/weir/ca /etc/weir/agent-tls /tmp/paris-gw-01.bundle
echo; echo "packaging tests passed in $(( $(date +%s) - t0 ))s"
