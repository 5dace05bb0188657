#!/bin/sh
# capture.sh: write the files nodeagent.Collect reads on this machine as a
# txtar fixture on stdout:
#
#   sudo rackagent/nodeagent/testdata/capture.sh > rackagent/nodeagent/testdata/NAME.txtar
#
# then add NAME to the table in collect_test.go and run
#   go test ./rackagent/nodeagent/ -run TestCollectGolden -update
#
# Conventions (parsed by fixture_test.go):
#   -- path --            a regular file (its text follows)
#   -- path [hex] --      a binary file, as hex bytes
#   -- path -> target --  a symbolic link, kept as the kernel has it
# Class directories (/sys/block/X, /sys/class/net/X, /sys/bus/pci/devices/X)
# and "device" links are kept as links and the files read through them are
# written under the directories they point to, so relative links resolve in
# the fixture as on the machine. "driver" links are kept (Collect reads only
# the link's name), their targets are not. /sys/class/dmi/id is written as a
# plain directory. Attributes the kernel refuses to read (the speed of a
# link that is down) are left out, as are files that are not there.
#
# Root reads the SMBIOS table and the DMI serial and uuid; review the output
# before committing it: serial numbers and MACs are in it.
# ROOT=DIR reads DIR instead of / (for trying the script on a copy).
set -eu
R=${ROOT:-}

file() { # file PATH: a text file, if readable
	[ -f "$R/$1" ] || return 0
	_text=$(cat "$R/$1" 2>/dev/null) || return 0
	printf -- '-- %s --\n%s\n' "$1" "$_text"
}

hexfile() { # hexfile PATH: a binary file, if readable
	[ -f "$R/$1" ] && [ -r "$R/$1" ] || return 0
	od -An -v -tx1 "$R/$1" >/dev/null 2>&1 || return 0
	printf -- '-- %s [hex] --\n' "$1"
	od -An -v -tx1 "$R/$1" | sed 's/^ *//'
}

link() { # link PATH: a symlink as it is
	[ -L "$R/$1" ] || return 0
	printf -- '-- %s -> %s --\n' "$1" "$(readlink "$R/$1")"
}

real() { # real PATH: PATH with links followed, relative to the root
	_real=$(readlink -f "$R/$1")
	echo "${_real#"$R"/}"
}

file proc/cpuinfo
file proc/meminfo
file proc/sys/kernel/arch

for a in sys_vendor product_name product_serial product_uuid bios_vendor bios_version bios_date; do
	file sys/class/dmi/id/$a
done
[ -d "$R/sys/firmware/efi" ] && file sys/firmware/efi/fw_platform_size
hexfile sys/firmware/dmi/tables/DMI

file sys/devices/system/cpu/present
file sys/devices/system/cpu/online
for c in "$R"/sys/devices/system/cpu/cpu[0-9]*; do
	c=sys/devices/system/cpu/${c##*/}
	file $c/topology/physical_package_id
	file $c/topology/core_id
	file $c/cpufreq/cpuinfo_max_freq
done

for b in "$R"/sys/block/*; do
	[ -e "$b" ] || continue
	n=${b##*/}
	link sys/block/$n
	d=$(real sys/block/$n)
	for a in size serial wwid queue/rotational; do file $d/$a; done
	if [ -L "$R/$d/device" ]; then
		link $d/device
		dev=$(real $d/device)
		for a in model serial wwid; do file $dev/$a; done
		hexfile $dev/vpd_pg80
		link $dev/driver
	fi
done
if [ -d "$R/dev/disk/by-path" ]; then
	for l in "$R"/dev/disk/by-path/*; do link dev/disk/by-path/${l##*/}; done
fi

for i in "$R"/sys/class/net/*; do
	[ -e "$i" ] || continue
	n=${i##*/}
	link sys/class/net/$n
	d=$(real sys/class/net/$n)
	for a in address carrier speed; do file $d/$a; done
	if [ -L "$R/$d/device" ]; then
		link $d/device
		link "$(real $d/device)/driver"
	fi
done

for p in "$R"/sys/bus/pci/devices/*; do
	[ -e "$p" ] || continue
	n=${p##*/}
	link sys/bus/pci/devices/$n
	d=$(real sys/bus/pci/devices/$n)
	for a in vendor device class; do file $d/$a; done
done
