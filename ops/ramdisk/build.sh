#!/bin/sh
# Build the task ramdisk: nodeagent as /init (and as /bin/mflab, the lab's
# vendor tool), mdadm with its shared libraries for raid tasks, util-linux's
# wipefs with its shared libraries for clean tasks, busybox (static) as
# /bin/sh with a link for each of its applets (the rescue shell, dd), the
# kernel modules of ops/ramdisk/modules.txt with their dependencies, and
# the matching kernel.
#
#   ops/ramdisk/build.sh            (make ramdisk)
#
# Writes build/ramdisk/:
#   metalfleet-ramdisk.cpio.gz   the initrd (newc cpio, gzip)
#   vmlinuz                      the kernel the modules are for
#   nodeagent                    the static binary inside (for reference)
#   BUILD-INFO                   kernel version, sha256 of both, nodeagent version
#
# Environment:
#   OUT=DIR       output directory (default build/ramdisk)
#   KVER=VERSION  kernel version (default: the one Debian's linux-image-amd64
#                 depends on, else the newest in /lib/modules)
#   MODULES="..." module names instead of modules.txt
#   VERSION=V     nodeagent version (default: git describe)
#   TOOLS="..."   more programs to put in the ramdisk (vendor tools), each
#                 copied to the same path with the shared libraries ldd
#                 names
# Installs linux-image-amd64, cpio, mdadm, busybox-static and util-linux
# with apt-get when they are missing (root needed then, and for the
# /dev/console node in the archive).
set -eu

REPO=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$REPO/build/ramdisk}
GO=${GO:-go}

need() { dpkg-query -W -f '${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
missing=""
for p in linux-image-amd64 cpio mdadm busybox-static util-linux; do need "$p" || missing="$missing $p"; done
if [ -n "$missing" ]; then
	echo "build.sh: installing$missing" >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing >&2
fi

if [ -z "${KVER:-}" ]; then
	# linux-image-amd64 depends on linux-image-VERSION (=...).
	KVER=$(dpkg-query -W -f '${Depends}' linux-image-amd64 2>/dev/null |
		tr ',' '\n' | sed -n 's/^ *linux-image-\([^ ]*\).*/\1/p' | grep -v '^amd64$' | head -1)
	if [ -z "$KVER" ] || [ ! -d "/lib/modules/$KVER" ]; then
		KVER=$(ls /lib/modules | sort -V | tail -1)
	fi
fi
MODDIR=/lib/modules/$KVER
KERNEL=/boot/vmlinuz-$KVER
[ -f "$MODDIR/modules.dep" ] || { echo "build.sh: no $MODDIR/modules.dep" >&2; exit 1; }
[ -f "$KERNEL" ] || { echo "build.sh: no $KERNEL" >&2; exit 1; }

VERSION=${VERSION:-$(git -C "$REPO" describe --always --dirty 2>/dev/null || echo dev)}
mkdir -p "$OUT"
echo "build.sh: nodeagent $VERSION for kernel $KVER" >&2
(cd "$REPO" && CGO_ENABLED=0 "$GO" build -trimpath \
	-ldflags "-s -w -X github.com/metalfleet/metalfleet/rackagent/nodeagent.Version=$VERSION" \
	-o "$OUT/nodeagent" ./cmd/nodeagent)

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/dev" "$STAGE/proc" "$STAGE/sys" "$STAGE/run" "$STAGE/tmp" \
	"$STAGE/etc/metalfleet" "$STAGE/lib/modules/$KVER"
cp "$OUT/nodeagent" "$STAGE/init"
chmod 755 "$STAGE/init"
# nodeagent run as mflab is the lab's vendor tool (proto.LabTool).
mkdir -p "$STAGE/bin"
ln -s /init "$STAGE/bin/mflab"

# mdadm (raid tasks) and any vendor tools, each with the shared libraries
# and the dynamic loader ldd names, at the same paths (without
# /etc/ld.so.cache the loader searches its built-in directories, which on
# Debian include /lib/x86_64-linux-gnu).
MDADM=$(command -v mdadm || echo /sbin/mdadm)
[ -x "$MDADM" ] || { echo "build.sh: no mdadm" >&2; exit 1; }
copy_program() {
	src=$1 dst=$2
	mkdir -p "$STAGE$(dirname "$dst")"
	cp -L "$src" "$STAGE$dst"
	chmod 755 "$STAGE$dst"
	ldd "$src" 2>/dev/null | sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p; s/^[[:space:]]*\(\/[^ ]*\) (.*/\1/p' |
		while read -r lib; do
			[ -e "$STAGE$lib" ] && continue
			mkdir -p "$STAGE$(dirname "$lib")"
			cp -L "$lib" "$STAGE$lib"
		done
}
copy_program "$MDADM" /sbin/mdadm
# wipefs (clean tasks) erases every signature libblkid knows.
WIPEFS=$(command -v wipefs || echo /sbin/wipefs)
[ -x "$WIPEFS" ] || { echo "build.sh: no wipefs (util-linux)" >&2; exit 1; }
copy_program "$WIPEFS" /sbin/wipefs
for tool in ${TOOLS:-}; do
	copy_program "$tool" "$tool"
done
# busybox-static: /bin/sh is the rescue shell (on the serial console and
# over SSH), and each applet gets a link where the ramdisk has nothing of
# its own (never over /init, mflab, mdadm or wipefs).
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || { echo "build.sh: no $BUSYBOX (busybox-static)" >&2; exit 1; }
cp "$BUSYBOX" "$STAGE/bin/busybox"
chmod 755 "$STAGE/bin/busybox"
"$BUSYBOX" --list-full | while read -r applet; do
	case "$applet" in
	"" | linuxrc | */init) continue ;;
	esac
	[ -e "$STAGE/$applet" ] || [ -L "$STAGE/$applet" ] && continue
	mkdir -p "$STAGE/$(dirname "$applet")"
	ln -s /bin/busybox "$STAGE/$applet"
done
[ -L "$STAGE/bin/sh" ] || ln -s busybox "$STAGE/bin/sh"
mkdir -p "$STAGE/etc/mdadm"
if [ "$(id -u)" = 0 ]; then
	# The copied mdadm runs in the ramdisk's tree alone.
	chroot "$STAGE" /sbin/mdadm --version >/dev/null 2>&1 ||
		{ echo "build.sh: mdadm does not run inside the ramdisk tree" >&2; exit 1; }
	chroot "$STAGE" /sbin/wipefs --version >/dev/null 2>&1 ||
		{ echo "build.sh: wipefs does not run inside the ramdisk tree" >&2; exit 1; }
	[ "$(chroot "$STAGE" /bin/sh -c 'echo $((6*7))' 2>/dev/null)" = 42 ] ||
		{ echo "build.sh: /bin/sh (busybox) does not run inside the ramdisk tree" >&2; exit 1; }
fi
# The kernel opens /dev/console for init before devtmpfs is mounted; without
# the node, init starts with no output until it mounts /dev (it does).
mknod -m 600 "$STAGE/dev/console" c 5 1 2>/dev/null ||
	echo "build.sh: cannot mknod /dev/console (not root); init reopens it after mounting /dev" >&2

if [ -n "${MODULES:-}" ]; then
	names=$MODULES
else
	names=$(sed 's/#.*//' "$REPO/ops/ramdisk/modules.txt")
fi
# nodeagent resolves the names with modules.dep, dependencies first, and
# skips (and names on stderr) the ones built into the kernel.
"$OUT/nodeagent" modules --dir "$MODDIR" $names > "$STAGE/etc/metalfleet/modules"
while read -r f; do
	mkdir -p "$STAGE/lib/modules/$KVER/$(dirname "$f")"
	cp "$MODDIR/$f" "$STAGE/lib/modules/$KVER/$f"
done < "$STAGE/etc/metalfleet/modules"
nmod=$(wc -l < "$STAGE/etc/metalfleet/modules")

# A reproducible archive: sorted names, fixed times, no owners.
find "$STAGE" -exec touch -h -d @0 {} +
(cd "$STAGE" && find . -mindepth 1 | LC_ALL=C sort |
	cpio -o -H newc --quiet --owner 0:0 --reproducible) | gzip -9n > "$OUT/metalfleet-ramdisk.cpio.gz"
cp "$KERNEL" "$OUT/vmlinuz"

sha() { sha256sum "$1" | cut -d' ' -f1; }
cat > "$OUT/BUILD-INFO" <<INFO
kernel_version=$KVER
kernel_sha256=$(sha "$OUT/vmlinuz")
ramdisk_sha256=$(sha "$OUT/metalfleet-ramdisk.cpio.gz")
nodeagent_version=$VERSION
nodeagent_sha256=$(sha "$OUT/nodeagent")
modules=$nmod
mdadm_version=$("$MDADM" --version 2>&1 | head -1)
wipefs_version=$("$WIPEFS" --version 2>&1 | head -1)
busybox_version=$("$BUSYBOX" 2>&1 | head -1)
INFO

size() { stat -c %s "$1"; }
echo "build.sh: wrote $OUT"
printf '  %-28s %10d bytes\n' metalfleet-ramdisk.cpio.gz "$(size "$OUT/metalfleet-ramdisk.cpio.gz")" \
	vmlinuz "$(size "$OUT/vmlinuz")" nodeagent "$(size "$OUT/nodeagent")"
echo "  modules: $nmod"
