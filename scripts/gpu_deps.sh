#!/usr/bin/env bash
# Fills .gpu-deps/ (git-ignored) with what scripts/gpu_check.sh needs on a GPU node that lacks
# the project's Debian packages: a GoogleTest source tree and LAPACKE / LAPACK / reference BLAS
# (headers + shared libraries, with libgfortran and libquadmath). About 17 MB; the device tool
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
L=/usr/lib/x86_64-linux-gnu
for so in liblapacke.so.3 liblapack.so.3 libblas.so.3 libgfortran.so.5 libquadmath.so.0; do
  cp -L "$L/$so" "$D/lapack/lib/"
done
du -sh "$D" | awk '{print "gpu_deps: " $1 " in .gpu-deps"}'
