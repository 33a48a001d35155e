#!/usr/bin/env bash
# The CPU-scale pets comparison: JPEG-LM vs VQ-LM vs pixel-LM with the same Llama (configs/model/1m.yaml)
# and the same training tokens (configs/train/pets-cpu.yaml), judged by `jpeglm eval`
# (configs/eval/pets-cpu.yaml). Run from the repository root; needs ../shared/data/pets.
set -euo pipefail
PETS=${PETS:-../shared/data/pets}
R=runs/pets-cpu
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
P="--val-fraction 0.02 --no-progress --workers 1"

jpeglm prep --codec jpeg --input $PETS/train --out $R/data/jpeg-bytes --size 64 $P
jpeglm tokenizer train --data $R/data/jpeg-bytes --vocab-size 320 --out $R/tokenizer-bpe
jpeglm prep --codec jpeg --input $PETS/train --tokenizer $R/tokenizer-bpe --out $R/data/jpeg --size 64 $P

jpeglm vq train --input $PETS/train --out $R/vq-model --config configs/vq/tiny.yaml --max-steps 1500 --threads 1
jpeglm prep --codec vq --vq-model $R/vq-model --input $PETS/train --out $R/data/vq $P

jpeglm pixel fit --input $PETS/train --out $R/palette.npz --size 32 --colors 512
jpeglm prep --codec pixel --palette $R/palette.npz --input $PETS/train --out $R/data/pixel $P

for s in jpeg vq pixel; do
  jpeglm train --config configs/train/pets-cpu.yaml --data $R/data/$s --out $R/train/$s
done

jpeglm eval --config configs/eval/pets-cpu.yaml
