# A reproducible newc (cpio) archive writer, sourced by the initramfs builders.
# The caller sets `entries` (an array of "type path mode [source | major minor]" lines, sorted,
# parents first; types d, c, f) and `mtime`, then calls write_archive, which writes the
# archive to stdout: fixed owners (0:0), inode numbers in entry order, the given mtime.

ino=0
offset=0

# One newc header + name; $1 name, $2 mode (octal, with type bits), $3 nlink,
# $4 size, $5 rdev major, $6 rdev minor.
header() {
    local name=$1 mode=$2 nlink=$3 size=$4 rmaj=$5 rmin=$6
    local namesize=$(( ${#name} + 1 ))
    ino=$((ino + 1))
    printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
        "$ino" "$((8#$mode))" 0 0 "$nlink" "$mtime" "$size" 0 0 "$rmaj" "$rmin" "$namesize" 0
    printf '%s\0' "$name"
    offset=$(( offset + 110 + namesize ))
    pad
}

# Zero bytes up to the next multiple of 4.
pad() {
    local n=$(( (4 - offset % 4) % 4 ))
    if [ "$n" -gt 0 ]; then
        head -c "$n" /dev/zero
        offset=$(( offset + n ))
    fi
}

write_archive() {
    local e type path mode a b size
    for e in "${entries[@]}"; do
        read -r type path mode a b <<<"$e"
        case $type in
            d) header "$path" "04$mode" 2 0 0 0 ;;
            c) header "$path" "02$mode" 1 0 "$a" "$b" ;;
            f)
                size=$(stat -c %s "$a")
                header "$path" "010$mode" 1 "$size" 0 0
                cat "$a"
                offset=$(( offset + size ))
                pad
                ;;
        esac
    done
    ino=-1 # the trailer carries inode 0
    header "TRAILER!!!" 0 1 0 0 0
}

