"""Hidden tests behind each lab's check cells, one module per lab."""
