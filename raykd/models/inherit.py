"""'Inheriting' initialisation: copy the teacher's FPN and head weights into the student."""

from __future__ import annotations

from torch import nn

from raykd.errors import UserError


def inherit_neck_and_head(student: nn.Module, teacher: nn.Module) -> int:
    """Copy every teacher weight except the backbone body (``backbone.body.*``) into the student.

    Both must share the head family and FPN width, or the shapes differ. Returns the number
    of tensors copied. The published MGD/FGD gains depend on this initialisation.
    """
    if type(student) is not type(teacher):
        raise UserError(f"needs the same head family, got student {type(student).__name__} and teacher "
                        f"{type(teacher).__name__}", key="student.inherit")
    s_state = student.state_dict()
    copied = {}
    for name, value in teacher.state_dict().items():
        if name.startswith("backbone.body."):
            continue
        if name not in s_state or s_state[name].shape != value.shape:
            raise UserError(f"teacher weight {name} {tuple(value.shape)} does not fit the student "
                            "(same fpn_channels needed)", key="student.inherit")
        copied[name] = value
    student.load_state_dict(copied, strict=False)
    return len(copied)
