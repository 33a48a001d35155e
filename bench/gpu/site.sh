# Sourced by results/pets/gpu.sh and bench/gpu/run.sh on the GPU machine (no network, no deepspeed,
# no jpeglm): the wheels of bench/gpu/make_wheels.sh into $SITE, and jpeglm from this tree laid out as
# its wheel is (pyproject's package-dir: data_prep/, eval/, configs/ inside jpeglm/), with no build step
# (the machine's setuptools may be older than the >= 68 the build needs). Needs $PY.
SITE=${SITE:-/tmp/site}
"$PY" -m pip install -q --upgrade --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl
rm -rf "$SITE/jpeglm"
cp -r jpeglm "$SITE/jpeglm"
for d in data_prep eval configs; do cp -r "$d" "$SITE/jpeglm/$d"; done
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
