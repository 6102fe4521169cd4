#!/usr/bin/env bash
# Makes a machine an iofs lab: two scratch disks formatted and mounted as XFS and Btrfs,
# then iofs installed by the repository's own scripts/setup.sh and put on PATH.
# The Vagrantfile runs it in the VM as root; the tests run it on loop devices.
#
#   provision.sh [--xfs DEV] [--btrfs DEV] [--scratch DIR] [--fstab FILE | --no-fstab]
#                [--bin DIR] [--no-setup] [--find]
#
# Disks (also IOFS_XFS_DISK / IOFS_BTRFS_DISK): given, else the disk whose serial is
# iofs-xfs / iofs-btrfs (the Vagrantfile sets these on libvirt), else the filesystem
# labelled iofs-xfs / iofs-btrfs (made by an earlier run), else - inside a VM only - the
# whole disks with no partitions, no filesystem and no mount, in name order.
#
# A disk is formatted only if it holds nothing at all; one that already holds the wanted
# filesystem is kept as it is, and one holding anything else is refused. So a second run
# changes nothing and keeps every result on the disks. Mounted at DIR/xfs and DIR/btrfs
# (DIR: /scratch), with an fstab entry by UUID and nofail. --find prints the disks that
# would be used and changes nothing.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
xfs_disk=${IOFS_XFS_DISK:-}
btrfs_disk=${IOFS_BTRFS_DISK:-}
scratch=/scratch
fstab=/etc/fstab
bin=/usr/local/bin
setup=1
find_only=0

die() {
    echo "provision: $*" >&2
    exit 1
}
say() { echo "provision: $*"; }

while (($#)); do
    case $1 in
        --xfs) xfs_disk=${2:?--xfs needs a device}; shift ;;
        --btrfs) btrfs_disk=${2:?--btrfs needs a device}; shift ;;
        --scratch) scratch=${2:?--scratch needs a directory}; shift ;;
        --fstab) fstab=${2:?--fstab needs a file}; shift ;;
        --no-fstab) fstab= ;;
        --bin) bin=${2:?--bin needs a directory}; shift ;;
        --no-setup) setup=0 ;;
        --find) find_only=1 ;;
        -h | --help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done
[[ $(id -u) -eq 0 ]] || die "run as root (formats and mounts disks)"

# -- finding the disks ------------------------------------------------------------------
by_serial() { # the disk whose serial is $1 (udev's /dev/disk/by-id), if exactly one
    local links=() link
    for link in /dev/disk/by-id/*"$1"; do
        [[ -e $link && $link != *-part* ]] && links+=("$(readlink -f "$link")")
    done
    mapfile -t links < <(printf '%s\n' "${links[@]}" | sort -u | sed '/^$/d')
    ((${#links[@]} == 1)) && echo "${links[0]}"
    return 0
}

by_label() { # the device holding the filesystem labelled $1, if exactly one
    local devices
    mapfile -t devices < <(blkid -c /dev/null -o device -t "LABEL=$1" 2>/dev/null || true)
    ((${#devices[@]} == 1)) && echo "${devices[0]}"
    return 0
}

blank_disks() { # whole disks with no partitions, signatures or mounts, in name order
    local disk
    while read -r disk; do
        [[ $(lsblk -nr -o NAME "$disk" | wc -l) -eq 1 ]] || continue # partitions, holders
        [[ $(blockdev --getro "$disk") -eq 0 ]] || continue
        [[ -z $(blkid -p -o export "$disk" 2>/dev/null || true) ]] || continue
        findmnt -rn -S "$disk" >/dev/null && continue
        grep -q "^$disk " /proc/swaps && continue
        echo "$disk"
    done < <(lsblk -dnp -o NAME,TYPE | awk '$2 == "disk" {print $1}' | sort)
}

find_disks() {
    [[ -n $xfs_disk ]] || xfs_disk=$(by_serial iofs-xfs)
    [[ -n $btrfs_disk ]] || btrfs_disk=$(by_serial iofs-btrfs)
    [[ -n $xfs_disk ]] || xfs_disk=$(by_label iofs-xfs)
    [[ -n $btrfs_disk ]] || btrfs_disk=$(by_label iofs-btrfs)
    [[ -n $xfs_disk && -n $btrfs_disk ]] && return
    # Guessing by emptiness is only safe on a machine made for this.
    if ! systemd-detect-virt --vm --quiet 2>/dev/null; then
        die "no scratch disks given or found (serial or label iofs-xfs/iofs-btrfs);" \
            "outside a VM give them: --xfs DEV --btrfs DEV"
    fi
    local blank
    mapfile -t blank < <(blank_disks)
    local needed=0
    [[ -n $xfs_disk ]] || needed=$((needed + 1))
    [[ -n $btrfs_disk ]] || needed=$((needed + 1))
    if ((${#blank[@]} != needed)); then
        die "need $needed blank disk(s), found ${#blank[@]} (${blank[*]:-none});" \
            "give them: --xfs DEV --btrfs DEV. (VirtualBox with Vagrant < 2.4: export" \
            "VAGRANT_EXPERIMENTAL=disks, then vagrant reload --provision)"
    fi
    [[ -n $xfs_disk ]] || { xfs_disk=${blank[0]}; blank=("${blank[@]:1}"); }
    [[ -n $btrfs_disk ]] || btrfs_disk=${blank[0]}
}

# -- formatting and mounting --------------------------------------------------------------
prepare() { # kind device: format if blank, mount at $scratch/kind, fstab entry
    local kind=$1 device mountpoint
    device=$(readlink -f "$2")
    [[ -b $device ]] || die "$kind: $2 is not a block device"
    command -v "mkfs.$kind" >/dev/null || die "mkfs.$kind is missing (run without --no-setup)"
    local found
    found=$(blkid -p -o value -s TYPE "$device" 2>/dev/null || true)
    if [[ -z $found ]]; then
        [[ -z $(blkid -p -o export "$device" 2>/dev/null || true) ]] ||
            die "$kind: $device holds a partition table or unknown data; not formatting it"
        findmnt -rn -S "$device" >/dev/null && die "$kind: $device is mounted; not formatting it"
        say "formatting $device as $kind"
        "mkfs.$kind" -q -L "iofs-$kind" "$device" >/dev/null
        udevadm settle --timeout=10 2>/dev/null || true
    elif [[ $found != "$kind" ]]; then
        die "$kind: $device already holds a $found filesystem; not formatting it"
    else
        say "$device already holds $kind: kept as it is"
    fi
    local uuid
    uuid=$(blkid -p -o value -s UUID "$device")
    [[ -n $uuid ]] || die "$kind: no UUID on $device"

    mkdir -p "$scratch/$kind"
    mountpoint=$(cd "$scratch/$kind" && pwd -P)
    local source # -v: a Btrfs source without its [/subvolume] suffix
    source=$(findmnt -rnv -o SOURCE --mountpoint "$mountpoint" || true)
    if [[ -z $source ]]; then
        local elsewhere
        elsewhere=$(findmnt -rn -o TARGET -S "$device" | head -n1 || true)
        [[ -z $elsewhere ]] || die "$kind: $device is already mounted at $elsewhere"
        mount -t "$kind" "$device" "$mountpoint"
        say "mounted $device at $mountpoint"
    elif [[ $(readlink -f "$source") != "$device" ]]; then
        die "$kind: $mountpoint is already a mount of $source, not $device"
    fi
    chmod 1777 "$mountpoint" # like /tmp: any user may make a directory to run in
    [[ -z $fstab ]] || fstab_entry "UUID=$uuid" "$mountpoint" "$kind"
}

fstab_entry() { # spec mountpoint type: exactly one entry for the mountpoint
    local spec=$1 mountpoint=$2 type=$3 new
    touch "$fstab"
    new=$(mktemp "$fstab.XXXXXX")
    awk -v mp="$mountpoint" '$0 ~ /^[[:space:]]*#/ || $2 != mp' "$fstab" >"$new"
    printf '%s %s %s defaults,nofail 0 0\n' "$spec" "$mountpoint" "$type" >>"$new"
    if cmp -s "$new" "$fstab"; then # already so: leave the file alone
        rm "$new"
        return
    fi
    chmod --reference="$fstab" "$new"
    mv "$new" "$fstab"
    # systemd makes mount units from /etc/fstab; it warns until it reads it again.
    if [[ $fstab == /etc/fstab && -d /run/systemd/system ]]; then
        systemctl daemon-reload
    fi
}

# -- installing iofs ----------------------------------------------------------------------
install_iofs() {
    "$repo/scripts/setup.sh"
    # Not an install step of iofs: bench records the git commit it ran, so the lab has git,
    # and root may read the synced checkout, which another user owns.
    if ! command -v git >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends git >/dev/null
    fi
    git config --system --get-all safe.directory | grep -qxF "$repo" ||
        git config --system --add safe.directory "$repo"
}

find_disks
if ((find_only)); then
    echo "xfs $xfs_disk"
    echo "btrfs $btrfs_disk"
    exit 0
fi
[[ $(readlink -f "$xfs_disk") != "$(readlink -f "$btrfs_disk")" ]] ||
    die "--xfs and --btrfs are the same device: $xfs_disk"
((setup)) && install_iofs
prepare xfs "$xfs_disk"
prepare btrfs "$btrfs_disk"
if [[ -x $repo/.venv/bin/iofs ]]; then
    mkdir -p "$bin"
    ln -sfn "$repo/.venv/bin/iofs" "$bin/iofs"
    say "iofs is $bin/iofs -> $repo/.venv/bin/iofs"
fi
say "ready: $scratch/xfs (xfs on $xfs_disk) and $scratch/btrfs (btrfs on $btrfs_disk)"
