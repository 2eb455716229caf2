"""Small shared helpers with no dependencies beyond the standard library."""
