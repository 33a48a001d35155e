#!/usr/bin/env bash
# The CPU-scale pets comparison, class-conditional (cat / dog) with classifier-free guidance: the same
# JPEG-LM, VQ-LM and pixel-LM recipe as run.sh (same Llama, same training config; data.class_dropout
# defaults to 0.1 on labelled data), with the labels of ../shared/data/pets/labels.csv (machine labels:
# about 1 in 8 `dog` is a cat, see its README), judged by configs/eval/pets-cpu-cond.yaml: class-balanced
# FID at cfg_scale 1 (no guidance), 1.5, 2 and 3, plus the prompt and unconditional (null class) settings.
# Run from the repository root; it reuses run.sh's BPE tokenizer, VQ model and palette (and makes them if absent).
# The label file also lists the test photos: prep reports those rows (no such image in train/) and goes on.
set -euo pipefail
PETS=${PETS:-../shared/data/pets}
R=runs/pets-cpu
C=runs/pets-cpu-cond
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
P="--val-fraction 0.02 --no-progress --workers 1 --labels file:$PETS/labels.csv"
# The unconditional run's BPE tokenizer, VQ model and palette, made here (as run.sh makes them) when absent,
# so both runs share one tokenizer, one codebook and one palette.
U="--val-fraction 0.02 --size 64 --no-progress --workers 1"
if [ ! -e $R/tokenizer-bpe ]; then
  [ -e $R/data/jpeg-bytes ] || jpeglm prep --codec jpeg --input $PETS/train --out $R/data/jpeg-bytes $U
  jpeglm tokenizer train --data $R/data/jpeg-bytes --vocab-size 320 --out $R/tokenizer-bpe
fi
[ -e $R/vq-model ] || jpeglm vq train --input $PETS/train --out $R/vq-model --config configs/vq/tiny.yaml --max-steps 1500 --threads 1
[ -e $R/palette.npz ] || jpeglm pixel fit --input $PETS/train --out $R/palette.npz --size 32 --colors 512

jpeglm prep --codec jpeg --input $PETS/train --tokenizer $R/tokenizer-bpe --out $C/data/jpeg --size 64 $P
jpeglm prep --codec vq --vq-model $R/vq-model --input $PETS/train --out $C/data/vq $P
jpeglm prep --codec pixel --palette $R/palette.npz --input $PETS/train --out $C/data/pixel $P

for s in jpeg vq pixel; do
  jpeglm train --config configs/train/pets-cpu.yaml --data $C/data/$s --out $C/train/$s
done

jpeglm eval --config configs/eval/pets-cpu-cond.yaml
