"""Jobs: the stages run in order for a table and its specifications; imports every stage."""
