"""`lazy.py`: public names load from their module on first use, and an unknown name is the usual AttributeError."""

import subprocess
import sys

import pytest

from iclgd_lens.lazy import lazy_exports


def test_a_lazy_name_is_its_modules_object_and_an_unknown_one_is_refused():
    getattr_, dir_ = lazy_exports("iclgd_lens", {"markdown_table": "views.markdown", "DTYPES": "sources.devices"})
    from iclgd_lens.sources.devices import DTYPES
    from iclgd_lens.views.markdown import markdown_table

    assert getattr_("markdown_table") is markdown_table and getattr_("DTYPES") is DTYPES
    assert dir_() == ["DTYPES", "markdown_table"]
    with pytest.raises(AttributeError, match="module 'iclgd_lens' has no attribute 'compair'"):
        getattr_("compair")


def test_importing_the_package_imports_no_torch():
    code = "import sys, iclgd_lens; iclgd_lens.__all__; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
