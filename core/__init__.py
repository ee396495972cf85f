"""The library: the seed U-Net, the DDPM process, training, data and metrics; no Sacred, MongoDB or pandas."""
