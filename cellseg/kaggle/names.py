"""Kaggle's naming rules, checked before any network call (a refused name after an upload wastes
minutes and ends in an opaque HTTP 400).

    check_kernel_ref("me/cellseg-infer"); check_kernel_title("cellseg infer")
    check_dataset_ref("me/cellseg-wheels"); check_dataset_title("cellseg wheels")

Rules (Kaggle's API documentation and its error answers): a reference is ``owner/slug``, the slug
lower-case letters, digits and ``-``; kernel titles have at least 5 characters; dataset slugs and
titles at least 6 (and at most 50). Every failure is a :class:`NameRuleError` (a ``UserError``
and a ``ValueError``) of one line naming the value, the rule and the fix.
"""

from __future__ import annotations

import re

from cellseg.errors import UserError


class NameRuleError(UserError, ValueError):
    """A kernel or dataset name Kaggle would refuse."""


KERNEL_TITLE_MIN = 5
DATASET_MIN = 6
MAX_LEN = 50
_OWNER = r"[A-Za-z0-9][A-Za-z0-9_-]*"
_SLUG = r"[a-z0-9][a-z0-9-]*"


def _ref(ref: str, what: str, min_slug: int) -> str:
    m = re.fullmatch(rf"({_OWNER})/({_SLUG})", ref or "")
    if not m:
        raise NameRuleError(f"{what} {ref!r} must be owner/slug (slug: lower-case letters, digits and "
                         "'-'), e.g. me/cellseg-weights")
    slug = m.group(2)
    if not min_slug <= len(slug) <= MAX_LEN:
        raise NameRuleError(f"{what} {ref!r}: Kaggle needs a slug of {min_slug}-{MAX_LEN} characters "
                         f"(got {len(slug)}); choose a longer name, e.g. {m.group(1)}/cellseg-{slug}")
    return ref


def _title(title: str, what: str, minimum: int) -> str:
    if not minimum <= len((title or "").strip()) <= MAX_LEN:
        raise NameRuleError(f"{what} {title!r}: Kaggle needs {minimum}-{MAX_LEN} characters (got "
                         f"{len((title or '').strip())}); pass a longer title or slug")
    return title


def check_kernel_ref(ref: str, what: str = "kernel id") -> str:
    """``owner/slug`` of a kernel (slug 3-50 characters)."""
    return _ref(ref, what, 3)


def check_kernel_title(title: str) -> str:
    """A kernel title of at least 5 characters."""
    return _title(title, "kernel title", KERNEL_TITLE_MIN)


def check_dataset_ref(ref: str, what: str = "dataset id") -> str:
    """``owner/slug`` of a dataset (slug at least 6 characters)."""
    return _ref(ref, what, DATASET_MIN)


def check_dataset_title(title: str) -> str:
    """A dataset title of at least 6 characters."""
    return _title(title, "dataset title", DATASET_MIN)
