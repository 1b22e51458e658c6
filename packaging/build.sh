#!/usr/bin/env bash
# Builds the four packages (release): weir-agent and weir-aggregator (with weir-certs), each as
# .deb (cargo-deb) and .rpm (cargo-generate-rpm), into target/packages/.
#
#   packaging/build.sh                  # version from Cargo.toml, revision 1
#   WEIR_DEB_REVISION=2 packaging/build.sh --no-build   # repackage the same binaries
#   WEIR_PROFILE=dev packaging/build.sh --no-build       # package the debug binaries that
#                                                        # `cargo build --workspace --bins` made
#                                                        # (CI's package tests: no second build)
#
# Other architectures: install the target (rustup target add aarch64-unknown-linux-gnu and a
# cross linker) and set WEIR_TARGET=aarch64-unknown-linux-gnu; the docs are then generated
# with a host build of the binaries (they are architecture-independent).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
out="$target_dir/packages"
revision=${WEIR_DEB_REVISION:-1}
build=1
[ "${1:-}" = "--no-build" ] && build=0
# Cargo profile whose binaries go into the packages; its output directory under target/.
profile=${WEIR_PROFILE:-release}
case "$profile" in
    dev) profile_dir=debug ;;
    *) profile_dir=$profile ;;
esac

# The packagers, at the versions these scripts were written against (cargo-deb warns that dev
# profiles will become an error; CI packages the dev build, so a newer one could break it).
need() {
    command -v "$1" >/dev/null 2>&1 && return
    echo "installing $2 $3 (cargo install --locked)"
    cargo install --locked "$2" --version "$3"
}
need cargo-deb cargo-deb 3.8.0
need cargo-generate-rpm cargo-generate-rpm 0.21.1

start=$(date +%s)
if [ "$build" = 1 ]; then
    cargo build --profile "$profile" --locked -p weir-agent -p weir-aggregator -p weir-certs --bins
fi

# Man pages and completions, from the binaries' own clap definitions.
docs="$target_dir/$profile_dir/weir-docs"
rm -rf "$docs"
for bin in weir-agent weir-aggregator weir-certs; do
    [ -x "$target_dir/$profile_dir/$bin" ] || { echo "no $target_dir/$profile_dir/$bin: build it first"; exit 1; }
    "$target_dir/$profile_dir/$bin" generate-docs "$docs/$bin"
done

# Maintainer scripts with packaging/common.sh inlined (self-contained once installed).
gen="$root/packaging/build"
rm -rf "$gen"
mkdir -p "$gen/debian" "$gen/rpm"
inline() { # template -> output
    awk -v common="$root/packaging/common.sh" '
        /^#COMMON#$/ { while ((getline line < common) > 0) print line; next } { print }
    ' "$1" > "$2"
}
for svc in weir-agent weir-aggregator; do
    mkdir -p "$gen/debian/$svc"
    for s in postinst prerm postrm; do
        inline "packaging/debian/$svc/$s" "$gen/debian/$svc/$s"
        chmod 755 "$gen/debian/$svc/$s"
        sh -n "$gen/debian/$svc/$s"
    done
    for s in pre post preun postun; do
        inline "packaging/rpm/$svc-$s.sh" "$gen/rpm/$svc-$s.sh"
        sh -n "$gen/rpm/$svc-$s.sh"
    done
done

mkdir -p "$out"
for pkg in weir-agent weir-aggregator; do
    cargo deb --no-build --profile "$profile" -p "$pkg" --deb-revision "$revision" -o "$out/"
    # cargo-generate-rpm takes the crate directory.
    cargo generate-rpm -p "${pkg#weir-}" --profile "$profile" -o "$out/" \
        --payload-compress gzip --set-metadata "release = \"$revision\""
done
ls -l "$out"
echo "packages built from the $profile profile in $(( $(date +%s) - start ))s (including the build: $build)"
