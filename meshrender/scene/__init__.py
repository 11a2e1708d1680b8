"""Scenes: loading user files (`load`), the intermediate types (`types`) and compilation into
flat arrays (`compile`)."""
