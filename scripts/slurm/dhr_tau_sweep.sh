#!/usr/bin/env bash
# A DHR sweep on Slurm through hydra-submitit-launcher (pip install -e ".[slurm]"): one job per tau,
# 4 GPUs each. A pre-empted or timed-out job is requeued by submitit (up to
# hydra.launcher.max_num_timeout times) and, with ckpt_path=last, resumes its own
# <sweep>/<job>/checkpoints/last.ckpt (written every callbacks.last_checkpoint.every_n_train_steps
# steps); Lightning's own SLURM auto-requeue is off under submitit (dhr/train.py).
#
#   bash scripts/slurm/dhr_tau_sweep.sh /data /weights/resnet101-5d3b4d8f.pth gpu
set -euo pipefail
DATA=${1:?data root (DHR tree with WSS/ seeds and USS features)}
WEIGHTS=${2:?ResNet-101 ImageNet weights}
PARTITION=${3:-gpu}
python -m dhr.train -m hydra/launcher=slurm hydra.launcher.partition="$PARTITION" \
    model=dhr dataset=voc backbone=resnet101 wss=mars paths.data_root="$DATA" backbone.weights="$WEIGHTS" \
    trainer=ddp trainer.devices=4 logger=wandb ckpt_path=last \
    model.dhr.tau=0.6,0.7,0.8
