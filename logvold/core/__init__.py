"""Pure core: event framing, formats, policy, layout and retention decisions.

Stdlib only; no file, network or framework I/O. Everything here is unit tested."""
