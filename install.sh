#!/bin/sh
# Run by the image's INSTALL label (`atomic install scanner-analytics-integration`):
#   docker run --rm --privileged -v /etc/atomic.d/:/host/etc/atomic.d/ $IMAGE sh /install.sh
# It puts the scanner's config where atomic looks for scanners: the host's /etc/atomic.d,
# mounted here at /host/etc/atomic.d.
set -eu

src=/analytics-integration
dir=/host/etc/atomic.d
dest="$dir/analytics-integration"

if [ ! -d "$dir" ]; then
    echo "install.sh: $dir is not mounted, so there is nowhere to install the scanner config." >&2
    echo "Run it the way 'atomic install' does:" >&2
    echo "  docker run --rm --privileged -v /etc/atomic.d/:/host/etc/atomic.d/ IMAGE sh /install.sh" >&2
    exit 1
fi

echo "Installing the analytics-integration scanner config for atomic scan"
# Copy next to the destination, then rename: atomic never sees a half-written config.
# The temporary name starts with a dot and is removed on failure.
tmp="$dir/.analytics-integration.tmp.$$"
trap 'rm -f "$tmp"' EXIT
cp "$src" "$tmp"
chmod 0644 "$tmp"
mv -f "$tmp" "$dest"
trap - EXIT
echo "Installed $src to $dest (on the host: /etc/atomic.d/analytics-integration)"
echo "Scan with: atomic scan --scanner analytics-integration [--scan_type register|verify|deploy] IMAGE"
