"""The label values created at 0 are the ones the code emits: a refusal kind or a limit
reason that is not pre-created would make its first occurrence invisible to increase()."""

from __future__ import annotations

import typing

from logvold.fileio.safedir import RefusalKind
from logvold.metrics import REFUSAL_KINDS, Metrics


def test_every_refusal_kind_is_created_at_zero() -> None:
    assert set(REFUSAL_KINDS) == set(typing.get_args(RefusalKind))
    text = Metrics().exposition()[0].decode()
    for kind in REFUSAL_KINDS:
        assert f'logvold_unsafe_files_refused_total{{kind="{kind}"}} 0.0' in text
    assert 'logvold_http_refused_total{reason="followers"} 0.0' in text
