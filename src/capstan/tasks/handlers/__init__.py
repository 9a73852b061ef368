"""Built-in task handlers: offline text work with libraries that ship their own data."""
