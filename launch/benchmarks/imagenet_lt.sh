#!/usr/bin/env bash
# ImageNet-LT, ResNeXt-50 32x4d, the paper's recipe (official configs: stage 1 instance-balanced,
# 90 epochs, batch 512, lr 0.2 cosine, wd 5e-4; cRT 10 epochs, LWS 5, class-balanced, lr 0.2).
# The paper reports (Many / Medium / Few / All, top-1 %):
#   joint 65.9 / 37.5 / 7.7 / 44.4    cRT 61.8 / 46.2 / 27.4 / 49.6
#   tau-norm 59.1 / 46.9 / 30.7 / 49.4    LWS 60.2 / 47.2 / 30.3 / 49.9
# (ResNeXt-152 32x4d: --arch resnext152_32x4d; joint 47.8, cRT 52.4, tau 52.8, LWS 53.3 All.)
# Pack first: lt_dist pack --list ImageNet_LT_train.txt ... --out shards/imagenet_lt (see shards/README.md).
set -euo pipefail
GPUS=${GPUS:-8}

deepspeed --num_gpus "$GPUS" launch/train_repr.py --ds_config launch/ds.json \
    --data shards/imagenet_lt --out runs/imagenet_lt --arch resnext50_32x4d --epochs 90 \
    --train-preset imagenet_train --eval-preset imagenet_eval

deepspeed --num_gpus "$GPUS" launch/train_classifier.py --ds_config launch/ds_stage2.json \
    --init runs/imagenet_lt --data shards/imagenet_lt --out runs/imagenet_lt-crt --method crt --epochs 10

deepspeed --num_gpus "$GPUS" launch/train_classifier.py --ds_config launch/ds_stage2.json \
    --init runs/imagenet_lt --data shards/imagenet_lt --out runs/imagenet_lt-lws --method lws --epochs 5

# tau-norm and NCM need no training: features once, then the search (tau on the official grid).
lt_dist extract --ckpt runs/imagenet_lt --data shards/imagenet_lt --out features/imagenet_lt
python tune/search_stage2.py --features features/imagenet_lt --out results/imagenet_lt
