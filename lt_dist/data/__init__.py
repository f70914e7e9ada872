"""The streaming loader: from packed shards to augmented tensors.

balance (p_j per class, one name table), sampler (which manifest row next, per rank
and worker; resumable), reader (bytes by manifest row, bounded open files), loader
(DataLoader workers + decoder, state_dict), presets (augmentation recipes by name),
dali (decode + augment with NVIDIA DALI; the only module that imports it), tvdecode
(the same recipes with torchvision/PIL, where DALI is absent), audit (sample-stats).
"""
