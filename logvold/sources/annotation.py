"""Read the YAML text of a pod's `logvold.io/logs` annotation into the plain
tree `core.pod_policy` checks. It reuses `config.yaml_file`'s reader (the one yaml
importer) so annotations get the same line marks, duplicate-key and
alias-bomb protection as the config file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from logvold.config.yaml_file import parse_yaml_tree
from logvold.core.config_tree import KeyPath
from logvold.core.pod_policy import PodStreams, evaluate_pod
from logvold.core.policy import LogPolicy


def parse_annotation_tree(text: str, file: str) -> tuple[object, dict[KeyPath, int]]:
    """The plain tree of an annotation's YAML; ConfigError on a syntax error."""
    return parse_yaml_tree(text, file)


def pod_streams(
    pod: Mapping[str, Any], *, annotation_key: str, kubelet_root: str, defaults: LogPolicy
) -> PodStreams:
    """The streams a pod object declares, or why its annotation was rejected."""
    return evaluate_pod(
        pod,
        annotation_key=annotation_key,
        kubelet_root=kubelet_root,
        defaults=defaults,
        parse_tree=parse_annotation_tree,
    )
