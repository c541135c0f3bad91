#!/usr/bin/env bash
# Fills .gpu-deps/ (git-ignored) with what scripts/gpu_check.sh needs on a GPU node that lacks
# the project's Debian packages: a GoogleTest source tree and LAPACKE / LAPACK / reference BLAS
# (headers + shared libraries, with libgfortran and libquadmath). About 19 MB; the device tool
# carries it: run(command="scripts/gpu_check.sh $OUT", carry=[".gpu-deps"]).
#
#   scripts/gpu_deps.sh        (on a Debian 12 machine with googletest and liblapacke-dev installed)
set -euo pipefail
cd "$(dirname "$0")/.."
D=.gpu-deps
rm -rf "$D"
mkdir -p "$D/lapack/include" "$D/lapack/lib"
cp -r /usr/src/googletest "$D/"
for h in lapacke.h lapacke_config.h lapacke_mangling.h lapacke_utils.h lapack.h cblas.h; do
  f=$(find /usr/include -name "$h" -print -quit)
  [ -n "$f" ] && cp -L "$f" "$D/lapack/include/"
done
# cblas.h may include its own config header (OpenBLAS's or the netlib one).
for h in cblas_mangling.h openblas_config.h; do
  f=$(find /usr/include -name "$h" -print -quit)
  [ -n "$f" ] && cp -L "$f" "$D/lapack/include/"
done
# The system's libblas.so.3 / liblapack.so.3 are usually OpenBLAS's (36 MB more, and they need
# libopenblas.so.0): carry the reference BLAS (with CBLAS) and LAPACK of Debian's libblas3 and
# liblapack3 instead, unpacked from their packages (apt-get download; nothing is installed).
L=/usr/lib/x86_64-linux-gnu
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download libblas3 liblapack3 >/dev/null 2>&1) ||
  { echo "gpu_deps: apt-get download libblas3 liblapack3 failed" >&2; exit 1; }
for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$tmp/x"; done
cp -L "$tmp/x$L/blas/libblas.so.3" "$tmp/x$L/lapack/liblapack.so.3" "$D/lapack/lib/"
for so in liblapacke.so.3 libtmglib.so.3 libgfortran.so.5 libquadmath.so.0; do
  cp -L "$L/$so" "$D/lapack/lib/"
done
# Every library needed by the carried ones is carried or in glibc / libgcc.
for f in "$D"/lapack/lib/*; do
  for need in $(readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
    case $need in libc.so.6|libm.so.6|libgcc_s.so.1|ld-linux-x86-64.so.2) ;;
      *) [ -f "$D/lapack/lib/$need" ] || { echo "gpu_deps: $f needs $need, not carried" >&2; exit 1; } ;;
    esac
  done
done
du -sh "$D" | awk '{print "gpu_deps: " $1 " in .gpu-deps"}'
