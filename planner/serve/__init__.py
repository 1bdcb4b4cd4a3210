"""Serving plans beyond one workload: disaggregated prefill/decode pools against co-located
chunked prefill (`helixplan serve-plan`)."""
