"""The RMNet paper's tables: printed values, their regeneration from this codebase, and reports."""
from .printed import TABLES, Check, Row
from .static import RowResult, check_rows, failures

__all__ = ["TABLES", "Check", "Row", "RowResult", "check_rows", "failures"]
