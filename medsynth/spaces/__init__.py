"""Where diffusion runs: a latent space (a VAE) or a Laplacian pyramid of pixel space."""
