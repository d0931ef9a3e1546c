"""Training engine: pair-shard streams, the L1 + patch-contrastive objective, pretrain/finetune loops, DDP.

Import the submodules you need; the package imports nothing at start-up, so ``ipt --help`` stays fast.
"""
