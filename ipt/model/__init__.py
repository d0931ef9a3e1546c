"""IPT network (pure torch: no I/O)."""

from ipt.model.ipt import IPT, build_ipt

__all__ = ["IPT", "build_ipt"]
