from __future__ import annotations

import json

import pytest

from edgeml.errors import MissingExtraError
from edgeml.extras import import_extra


def test_an_installed_module_is_returned() -> None:
    assert import_extra("json", "json", "compile", "reading JSON") is json


def test_a_missing_module_names_the_package_and_the_extra_that_installs_it() -> None:
    with pytest.raises(MissingExtraError, match=r"^'some-pkg' is not installed \(needed for testing\)\. "
                                                r"Install it with: pip install 'edgeml\[some-extra\]'$") as info:
        import_extra("edgeml_no_such_module.sub", "some-pkg", "some-extra", "testing")
    assert isinstance(info.value.__cause__, ImportError)
    assert (info.value.package, info.value.extra) == ("some-pkg", "some-extra")
