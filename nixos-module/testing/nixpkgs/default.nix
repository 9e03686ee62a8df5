# Stands in for `import nixpkgs { system; overlays; }` when the flake is evaluated by
# the tests (flake-eval.nix): the fake pkgs of ../pkgs.nix with the overlays applied.
{ system ? "x86_64-linux", overlays ? [ ], ... }:

let
  lib = import ../lib.nix;
  base = import ../pkgs.nix { inherit lib system; };
  final = builtins.foldl' (prev: overlay: prev // overlay final prev) base overlays;
in
final
