"""remapgc as a library and a distribution: silent unless asked, light to import, a complete wheel."""
