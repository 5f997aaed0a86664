"""Reading and validation: tables, specifications and shipped files in; imports no stage."""
