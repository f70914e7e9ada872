#!/usr/bin/env bash
# Places-LT, ResNet-152 started from ImageNet-pretrained weights (the paper's protocol; bring the
# torchvision-format file yourself, e.g. resnet152-imagenet.pth: its 1000-class fc is skipped).
# Official stage-2 configs: cRT 10 epochs, LWS 5, batch 256, lr 0.1, wd 5e-4 (launch/ds_stage2_places.json).
# Places-LT's transforms are ImageNet's (same mean/std and jitter). The stage-1 lr/epochs below are
# lt-dist's choice for fine-tuning a pretrained backbone (the official repository ships no Places
# stage-1 config): 30 epochs at lr 0.1 per 256 images with the ImageNet recipe otherwise.
# The paper reports (All, top-1 %): joint 30.2, cRT 36.7, tau-norm 37.9, LWS 37.6.
set -euo pipefail
GPUS=${GPUS:-8}
PRETRAINED=${PRETRAINED:-resnet152-imagenet.pth}

deepspeed --num_gpus "$GPUS" launch/train_repr.py --ds_config launch/ds_places.json \
    --data shards/places_lt --out runs/places_lt --arch resnet152 --epochs 30 \
    --init-from "$PRETRAINED" --train-preset imagenet_train --eval-preset imagenet_eval

deepspeed --num_gpus "$GPUS" launch/train_classifier.py --ds_config launch/ds_stage2_places.json \
    --init runs/places_lt --data shards/places_lt --out runs/places_lt-crt --method crt --epochs 10

deepspeed --num_gpus "$GPUS" launch/train_classifier.py --ds_config launch/ds_stage2_places.json \
    --init runs/places_lt --data shards/places_lt --out runs/places_lt-lws --method lws --epochs 5

lt_dist extract --ckpt runs/places_lt --data shards/places_lt --out features/places_lt
python tune/search_stage2.py --features features/places_lt --out results/places_lt
