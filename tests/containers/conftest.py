"""Fixtures of the container tests: the CRD fixture of the integration tests, for the operator."""

from __future__ import annotations

from tests.integration.conftest import crd

__all__ = ["crd"]
