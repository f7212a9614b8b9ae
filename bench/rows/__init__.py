"""The bench's row families, one module each. A module here that defines NUMBER (its row number)
and `measure(device, args) -> list[Row]` is a row family; FAMILIES finds them all, in order."""

import importlib
import pkgutil

FAMILIES = {}
for _info in pkgutil.iter_modules(__path__):
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    if hasattr(_module, "NUMBER") and hasattr(_module, "measure"):
        FAMILIES[_module.NUMBER] = _module
FAMILIES = dict(sorted(FAMILIES.items()))
