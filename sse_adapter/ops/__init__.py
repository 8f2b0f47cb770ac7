"""Operations: logs, metrics, traces and the access observer."""
