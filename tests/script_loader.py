"""Import a script of scripts/ (not a package) as a module, for tests."""
import importlib.util
import os
import sys

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")


def load_script(name: str):
    """The module of ``scripts/<name>.py``, registered in sys.modules (dataclasses look it up there)."""
    module_name = f"script_{name}"  # not the bare name, which could shadow an installed package
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, os.path.join(SCRIPTS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
