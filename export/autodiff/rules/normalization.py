"""VJP rules: normalization ops."""

from __future__ import annotations

from ..registry import rule
