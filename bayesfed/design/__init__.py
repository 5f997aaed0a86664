"""Design and sufficient statistics: pupils to matrices and mergeable moments; imports inputs."""
