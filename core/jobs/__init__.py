"""Jobs: the record, spec, report, cost, formats, architectures, lifecycle, public views and
error codes."""
