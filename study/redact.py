"""Keep credentials out of everything study prints or writes.

    python -c "from study.redact import redact; print(redact('s3://AKIA:s3cr3t@bucket/results?secret_key=x'))"
    # s3://***@bucket/results?secret_key=***

A storage URI may carry credentials (`s3://KEY:SECRET@bucket/path`, or `?access_key=…&secret_key=…`
as pyarrow accepts them). `redact` replaces the user-info part and the values of query parameters
whose names say they are secret; everything else (scheme, host, path) stays, so the line still
says where the results are. Use it on any text that may hold a URI: it leaves other text alone.
"""

from __future__ import annotations

import re

MASK = "***"

# scheme://user[:password]@  → scheme://***@   (the user part alone can be an access key)
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s?#]+)@")
# ?name=value / &name=value where the name says secret
_SECRET_PARAM = re.compile(
    r"(?P<name>[?&;](?:[A-Za-z0-9_.-]*(?:key|secret|token|password|passwd|credential|signature|sig)[A-Za-z0-9_.-]*))=(?P<value>[^&#\s'\"]*)",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """`text` with every URI's credentials replaced by ***."""
    text = _USERINFO.sub(lambda match: f"{match['scheme']}{MASK}@", text)
    return _SECRET_PARAM.sub(lambda match: f"{match['name']}={MASK}", text)
