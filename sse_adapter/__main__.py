from sse_adapter.cli import main

main()
