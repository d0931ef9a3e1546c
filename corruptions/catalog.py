"""Every built-in corruption, imported explicitly (one line each). Imported for the whole list only (the contract
tests, ``corruptions.known()``, error messages); a stage imports just the corruption it runs, by name
(``corruptions.get("jpeg")`` imports ``corruptions.jpeg``), so adding one here changes no other stage's code."""

from . import (  # noqa: F401
    bicubic_down,
    blur_down,
    gaussian_noise,
    jpeg,
    rain_streaks,
)
