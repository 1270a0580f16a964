"""Keep Intel's ``openvino-telemetry`` from sending anything, in this process.

openvino-telemetry reads no environment variable. It decides from a consent file
(``~/intel/openvino_telemetry``: "1" accepted, "0" declined) and, when the file is absent, tools that
create ``Telemetry(enable_opt_in_dialog=False)`` — NNCF and OpenVINO's model converter do — count that
as consent and send events to Google Analytics. Edge sites are air-gapped and edgeml never phones home,
so we answer the consent check with "declined" for this process (without touching the user's home) and
switch off any telemetry object that already exists.
"""

from __future__ import annotations

import functools


@functools.cache
def disable_vendor_telemetry() -> bool:
    """Returns True when openvino-telemetry is installed and now off; False when it is not installed."""
    try:
        from openvino_telemetry import main as telemetry_main
        from openvino_telemetry.utils import opt_in_checker
    except ImportError:
        return False

    def declined(self: object, enable_opt_in_dialog: bool, disable_in_ci: bool = False) -> object:
        return opt_in_checker.ConsentCheckResult.DECLINED

    opt_in_checker.OptInChecker.check = declined
    # Telemetry is a singleton (its metaclass keeps the instance in a name-mangled attribute): an
    # instance created before us must go quiet too; a later init() re-runs the check above.
    instance = getattr(telemetry_main.Telemetry, "_SingletonMetaClass__single_instance", None)
    if instance is not None:
        instance.consent = False
    return True
