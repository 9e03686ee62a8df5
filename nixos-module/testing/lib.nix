# A small stand-in for nixpkgs' lib, for evaluating the secretivex NixOS module where
# nixpkgs is not available (tests/nix/). It is written from the documented behaviour of
# the module system, not copied, and implements just enough of it:
#
#   - options: mkOption, mkEnableOption, mkPackageOption, literalExpression, ...
#   - properties: mkIf, mkMerge, mkOverride (mkDefault, mkForce, mkOptionDefault),
#     mkOrder (mkBefore, mkAfter); discharged, filtered by priority and pushed down
#     into attribute sets the way lib/modules.nix does it
#   - types: bool, int, str, lines, path, package, enum, strMatching, nullOr, listOf,
#     attrsOf, either, oneOf, submodule (with freeformType), anything, ...; definitions
#     are type-checked and merged per type (lists concatenate, equal scalars merge,
#     differing scalars at the same priority are a conflict)
#   - evalModules { modules; specialArgs; }: a fixed point over `config`, plus
#     `undeclared`: definitions for options nobody declared (typos)
#
# It is deliberately strict where the real lib is strict, so a module that evaluates
# here has its option paths, types and priorities right; it is not a replacement for
# evaluating against nixpkgs (the flake's checks do that).
let
  b = builtins;

  # ------------------------------------------------------------------ basic helpers
  id = x: x;
  const = x: _: x;
  flip = f: a: c: f c a;
  optional = cond: x: if cond then [ x ] else [ ];
  optionals = cond: xs: if cond then xs else [ ];
  optionalString = cond: s: if cond then s else "";
  optionalAttrs = cond: as: if cond then as else { };
  concatMap = f: xs: b.concatLists (map f xs);
  flatten = x: if b.isList x then concatMap flatten x else [ x ];
  last = xs: b.elemAt xs (b.length xs - 1);
  imap0 = f: xs: b.genList (i: f i (b.elemAt xs i)) (b.length xs);
  imap1 = f: xs: b.genList (i: f (i + 1) (b.elemAt xs i)) (b.length xs);
  unique = b.foldl' (acc: x: if b.elem x acc then acc else acc ++ [ x ]) [ ];
  toList = x: if b.isList x then x else [ x ];
  nameValuePair = name: value: { inherit name value; };
  mapAttrsToList = f: as: map (n: f n as.${n}) (b.attrNames as);
  mapAttrs' = f: as: b.listToAttrs (mapAttrsToList f as);
  filterAttrs = pred: as: b.removeAttrs as (b.filter (n: !(pred n as.${n})) (b.attrNames as));
  genAttrs = names: f: b.listToAttrs (map (n: nameValuePair n (f n)) names);
  attrByPath =
    path: default: set:
    if path == [ ] then set
    else if b.isAttrs set && set ? ${b.head path} then attrByPath (b.tail path) default set.${b.head path}
    else default;
  setAttrByPath = path: value: if path == [ ] then value else { ${b.head path} = setAttrByPath (b.tail path) value; };
  recursiveUpdate =
    lhs: rhs:
    b.zipAttrsWith (
      n: vs:
      if b.length vs == 1 then b.head vs
      else if b.isAttrs (b.elemAt vs 0) && b.isAttrs (b.elemAt vs 1) && !(isDerivation (b.elemAt vs 1))
      then recursiveUpdate (b.elemAt vs 0) (b.elemAt vs 1)
      else b.elemAt vs 1
    ) [ lhs rhs ];
  hasPrefix = pre: s: b.substring 0 (b.stringLength pre) s == pre;
  hasSuffix =
    suf: s:
    let ls = b.stringLength s; lf = b.stringLength suf; in ls >= lf && b.substring (ls - lf) lf s == suf;
  hasInfix = inf: s: b.match ".*${escapeRegex inf}.*" s != null;
  removePrefix = pre: s: if hasPrefix pre s then b.substring (b.stringLength pre) (-1) s else s;
  removeSuffix =
    suf: s: if hasSuffix suf s then b.substring 0 (b.stringLength s - b.stringLength suf) s else s;
  escapeRegex = b.replaceStrings
    [ "\\" "[" "]" "{" "}" "(" ")" "." "*" "+" "?" "^" "$" "|" ]
    [ "\\\\" "\\[" "\\]" "\\{" "\\}" "\\(" "\\)" "\\." "\\*" "\\+" "\\?" "\\^" "\\$" "\\|" ];
  splitString = sep: s: b.filter b.isString (b.split (escapeRegex sep) s);
  concatStringsSep = b.concatStringsSep;
  concatMapStringsSep = sep: f: xs: b.concatStringsSep sep (map f xs);
  concatStrings = b.concatStringsSep "";
  escapeShellArg = s: "'${b.replaceStrings [ "'" ] [ "'\\''" ] (toString s)}'";
  escapeShellArgs = xs: b.concatStringsSep " " (map escapeShellArg xs);
  boolToString = x: if x then "true" else "false";
  isDerivation = x: b.isAttrs x && (x.type or null) == "derivation";
  isFunction = b.isFunction;
  isStringLike = x: b.isString x || b.isPath x || (b.isAttrs x && (x ? outPath || x ? __toString));
  any = b.any;
  all = b.all;
  elem = b.elem;
  versionAtLeast = v: w: b.compareVersions v w >= 0;

  showLoc = loc: b.concatStringsSep "." loc;
  showFiles = defs: b.concatStringsSep ", " (unique (map (d: toString (d.file or "<unknown>")) defs));

  # ------------------------------------------------------------------ documentation
  literalExpression = text: { _type = "literalExpression"; inherit text; };
  literalMD = text: { _type = "literalMD"; inherit text; };
  mdDoc = id;

  # ------------------------------------------------------------------ properties
  mkIf = condition: content: { _type = "if"; inherit condition content; };
  mkMerge = contents: { _type = "merge"; inherit contents; };
  mkOverride = priority: content: { _type = "override"; inherit priority content; };
  mkOptionDefault = mkOverride 1500;
  mkDefault = mkOverride 1000;
  mkImageMediaOverride = mkOverride 60;
  mkForce = mkOverride 50;
  mkVMOverride = mkOverride 10;
  mkOrder = priority: content: { _type = "order"; inherit priority content; };
  mkBefore = mkOrder 500;
  mkAfter = mkOrder 1500;
  defaultOrderPriority = 1000;
  defaultOverridePriority = 100;

  # mkMerge/mkIf -> the list of plain values they stand for (conditions are evaluated).
  discharge =
    def:
    if (def._type or "") == "merge" then concatMap discharge def.contents
    else if (def._type or "") == "if" then
      if !b.isBool def.condition then throw "mkIf called with a non-Boolean condition"
      else if def.condition then discharge def.content
      else [ ]
    else [ def ];

  # Push mkIf/mkMerge/mkOverride on an attribute set into its attributes, without
  # evaluating conditions (so `config = mkIf cfg.enable { ... }` does not recurse).
  pushDown =
    cfg:
    if (cfg._type or "") == "merge" then concatMap pushDown cfg.contents
    else if (cfg._type or "") == "if" then map (b.mapAttrs (_: mkIf cfg.condition)) (pushDown cfg.content)
    else if (cfg._type or "") == "override" then
      map (b.mapAttrs (_: mkOverride cfg.priority)) (pushDown cfg.content)
    else [ cfg ];

  # Keep only the definitions of the highest priority (lowest number); strip mkOverride.
  filterOverrides =
    defs:
    let
      prio = def: if (def.value._type or "") == "override" then def.value.priority else defaultOverridePriority;
      best = b.foldl' (acc: def: if prio def < acc then prio def else acc) 9999 defs;
      strip = def: if (def.value._type or "") == "override" then def // { value = def.value.content; } else def;
    in
    map strip (b.filter (def: prio def == best) defs);

  sortOrders =
    defs:
    let
      ord = def: if (def.value._type or "") == "order" then def.value.priority else defaultOrderPriority;
      strip = def: if (def.value._type or "") == "order" then def // { value = def.value.content; } else def;
    in
    map strip (b.sort (x: y: ord x < ord y) defs);

  # The heart of option evaluation: definitions -> merged value (or "not defined").
  mergeDefinitions =
    loc: type: defs:
    let
      discharged = concatMap (d: map (v: d // { value = v; }) (discharge d.value)) defs;
      final = sortOrders (filterOverrides discharged);
      bad = b.filter (d: !(type.check d.value)) final;
      described = d: if b.isAttrs d.value && d.value ? _type then "a mk* property (${d.value._type}) where a value is expected" else b.typeOf d.value;
    in
    {
      isDefined = final != [ ];
      defsFinal = final;
      mergedValue =
        if bad != [ ] then
          throw "A definition for option `${showLoc loc}' is not of type `${type.description}': ${described (b.head bad)} in ${showFiles bad}."
        else type.merge loc final;
    };

  # ------------------------------------------------------------------ options
  mkOption = attrs: attrs // { _type = "option"; };
  isOption = x: b.isAttrs x && (x._type or "") == "option";
  mkEnableOption =
    name:
    mkOption {
      type = types.bool;
      default = false;
      example = true;
      description = "Whether to enable ${name}.";
    };
  mkPackageOption =
    pkgs: name:
    { default ? [ name ], example ? null, extraDescription ? "", nullable ? false, pkgsText ? "pkgs" }:
    let
      path = if b.isList default then default else [ default ];
      attrPath = b.concatStringsSep "." path;
    in
    mkOption ({
      type = if nullable then types.nullOr types.package else types.package;
      default = attrByPath path (throw "${attrPath} cannot be found in ${pkgsText}") pkgs;
      defaultText = literalExpression "${pkgsText}.${attrPath}";
      description = "The ${attrPath} package to use.${extraDescription}";
    } // optionalAttrs (example != null) { inherit example; });

  mergeEqualOption =
    loc: defs:
    let
      first = b.head defs;
      same = x: y: if isDerivation x || isDerivation y then toString x == toString y else x == y;
    in
    if b.all (d: same d.value first.value) defs then first.value
    else throw "The option `${showLoc loc}' has conflicting definition values in ${showFiles defs}.";

  mergeOneOption =
    loc: defs:
    if b.length defs == 1 then (b.head defs).value
    else throw "The unique option `${showLoc loc}' is defined multiple times, in ${showFiles defs}.";

  # ------------------------------------------------------------------ types
  mkOptionType =
    { name, description ? name, check ? const true, merge ? mergeEqualOption, nestedTypes ? { } }:
    { _type = "option-type"; inherit name description check merge nestedTypes; };

  types = rec {
    anything = mkOptionType {
      name = "anything";
      merge =
        loc: defs:
        if b.all (d: b.isAttrs d.value && !(isDerivation d.value)) defs then (attrsOf anything).merge loc defs
        else if b.all (d: b.isList d.value) defs && b.length defs == 1 then (b.head defs).value
        else mergeEqualOption loc defs;
    };
    unspecified = anything;
    raw = mkOptionType { name = "raw"; merge = mergeOneOption; };
    attrs = mkOptionType { name = "attrs"; check = b.isAttrs; merge = loc: defs: b.foldl' (a: d: a // d.value) { } defs; };
    bool = mkOptionType { name = "bool"; description = "boolean"; check = b.isBool; };
    int = mkOptionType { name = "int"; description = "signed integer"; check = b.isInt; };
    ints = {
      unsigned = mkOptionType { name = "unsignedInt"; check = x: b.isInt x && x >= 0; };
      positive = mkOptionType { name = "positiveInt"; check = x: b.isInt x && x > 0; };
      between = lo: hi: mkOptionType { name = "intBetween"; check = x: b.isInt x && x >= lo && x <= hi; };
    };
    port = ints.between 0 65535;
    float = mkOptionType { name = "float"; check = b.isFloat; };
    number = either int float;
    str = mkOptionType { name = "str"; description = "string"; check = b.isString; };
    nonEmptyStr = mkOptionType { name = "nonEmptyStr"; check = x: b.isString x && b.match "[ \t\n]*" x == null; };
    singleLineStr = mkOptionType { name = "singleLineStr"; check = x: b.isString x && b.match ".*\n.*" x == null; };
    strMatching =
      pattern:
      mkOptionType {
        name = "strMatching ${pattern}";
        description = "string matching the pattern ${pattern}";
        check = x: b.isString x && b.match pattern x != null;
      };
    separatedString =
      sep:
      mkOptionType {
        name = "separatedString";
        check = b.isString;
        merge = loc: defs: b.concatStringsSep sep (map (d: d.value) defs);
      };
    lines = separatedString "\n";
    commas = separatedString ",";
    envVar = separatedString ":";
    path = mkOptionType {
      name = "path";
      check = x: b.isPath x || (isStringLike x && hasPrefix "/" (toString x));
    };
    package = mkOptionType {
      name = "package";
      check = x: isDerivation x || (b.isString x && hasPrefix "/" x);
    };
    enum =
      values:
      mkOptionType {
        name = "enum";
        description = "one of ${b.concatStringsSep ", " (map (v: b.toJSON v) values)}";
        check = x: b.elem x values;
      };
    nullOr =
      t:
      mkOptionType {
        name = "nullOr";
        description = "null or ${t.description}";
        check = x: x == null || t.check x;
        merge =
          loc: defs:
          if b.all (d: d.value == null) defs then null
          else if b.any (d: d.value == null) defs then
            throw "The option `${showLoc loc}' is defined both null and not null, in ${showFiles defs}."
          else t.merge loc defs;
        nestedTypes.elemType = t;
      };
    listOf =
      t:
      mkOptionType {
        name = "listOf";
        description = "list of ${t.description}";
        check = b.isList;
        merge =
          loc: defs:
          map (x: x.value) (
            b.filter (x: x ? value) (
              b.concatLists (
                imap1 (
                  n: def:
                  imap1 (
                    m: v:
                    let r = mergeDefinitions (loc ++ [ "[definition ${toString n}-entry ${toString m}]" ]) t [ { inherit (def) file; value = v; } ]; in
                    optionalAttrs r.isDefined { value = r.mergedValue; }
                  ) def.value
                ) defs
              )
            )
          );
        nestedTypes.elemType = t;
      };
    attrsOf =
      t:
      mkOptionType {
        name = "attrsOf";
        description = "attribute set of ${t.description}";
        check = x: b.isAttrs x && !(isDerivation x);
        merge =
          loc: defs:
          let
            perName = b.zipAttrsWith (_: ds: ds) (
              map (def: b.mapAttrs (_: v: { inherit (def) file; value = v; }) def.value) (concatMap (d: map (v: d // { value = v; }) (pushDown d.value)) defs)
            );
            merged = b.mapAttrs (n: ds: mergeDefinitions (loc ++ [ n ]) t ds) perName;
          in
          b.mapAttrs (_: r: r.mergedValue) (filterAttrs (_: r: r.isDefined) merged);
        nestedTypes.elemType = t;
      };
    lazyAttrsOf = attrsOf;
    uniq = t: t // { merge = mergeOneOption; };
    either =
      t1: t2:
      mkOptionType {
        name = "either";
        description = "${t1.description} or ${t2.description}";
        check = x: t1.check x || t2.check x;
        merge =
          loc: defs:
          if b.all (d: t1.check d.value) defs then t1.merge loc defs
          else if b.all (d: t2.check d.value) defs then t2.merge loc defs
          else mergeOneOption loc defs;
      };
    oneOf = ts: b.foldl' either (b.head ts) (b.tail ts);
    # submodule { options = { ... }; freeformType = ...; }; a function module is
    # called with { name, config, lib, ... } like the real thing.
    submoduleWith =
      { modules, specialArgs ? { } }:
      mkOptionType {
        name = "submodule";
        check = x: b.isAttrs x || b.isFunction x;
        merge =
          loc: defs:
          let
            e = evalModules {
              modules =
                modules
                ++ map (d: if b.isFunction d.value then d.value else { _file = d.file; config = d.value; }) defs;
              specialArgs = specialArgs // { name = last loc; };
              prefix = loc;
            };
          in
          if e.undeclared != [ ] then
            throw "The option `${b.head e.undeclared}' does not exist (defined in ${showFiles defs})."
          else e.config;
      };
    submodule = m: submoduleWith { modules = toList m; };
  };

  # ------------------------------------------------------------------ evalModules
  evalModules =
    { modules, specialArgs ? { }, prefix ? [ ] }:
    let
      args = { inherit lib config options; } // specialArgs;
      # a module: a path, a function of args, or an attribute set (structured, with
      # options/config/imports, or shorthand: the whole set is config)
      normalize =
        file: m:
        if b.isPath m || b.isString m then normalize (toString m) (import m)
        else if b.isFunction m then normalize file (m args)
        else
          let
            structured = m ? options || m ? config;
            meta = [ "_file" "key" "imports" "freeformType" "disabledModules" "meta" "_class" ];
            extra = b.attrNames (b.removeAttrs m (meta ++ [ "options" "config" ]));
          in
          if structured && extra != [ ] then
            throw "Module `${m._file or file}' has an unsupported attribute `${b.head extra}' (put it under config)."
          else
            {
              file = m._file or file;
              imports = m.imports or [ ];
              options = m.options or { };
              config = if structured then m.config or { } else b.removeAttrs m meta;
              freeformType = m.freeformType or null;
            };
      collect = file: m: let n = normalize file m; in [ n ] ++ concatMap (collect n.file) n.imports;
      loaded = concatMap (collect "<module>") modules;

      mergeDecls =
        path: decls:
        if b.all isOption decls then
          if b.length decls == 1 then b.head decls
          else throw "The option `${showLoc path}' is declared more than once."
        else if b.any isOption decls then
          throw "The option `${showLoc path}' is declared both as an option and as a set of options."
        else b.zipAttrsWith (n: ds: mergeDecls (path ++ [ n ]) ds) decls;
      options = mergeDecls prefix (map (m: m.options) loaded);
      freeformType = b.foldl' (acc: m: if m.freeformType != null then m.freeformType else acc) null loaded;

      pushed = defs: concatMap (d: map (v: d // { value = v; }) (pushDown d.value)) defs;
      subDefs =
        name: defs:
        map (d: d // { value = d.value.${name}; }) (b.filter (d: b.isAttrs d.value && d.value ? ${name}) (pushed defs));

      evalOption =
        loc: opt: defs:
        let
          withDefault =
            optional (opt ? default) { file = "default of ${showLoc loc}"; value = mkOptionDefault opt.default; }
            ++ defs;
          r = mergeDefinitions loc (opt.type or types.anything) withDefault;
        in
        if r.isDefined then r.mergedValue else throw "The option `${showLoc loc}' is used but not defined.";

      evalTree =
        loc: decls: defs:
        if isOption decls then evalOption loc decls defs
        else b.mapAttrs (n: d: evalTree (loc ++ [ n ]) d (subDefs n defs)) decls;

      topDefs = map (m: { inherit (m) file; value = m.config; }) loaded;
      declared = evalTree prefix options topDefs;
      freeDefs = map (d: d // { value = b.removeAttrs d.value (b.attrNames options); }) (pushed topDefs);
      free =
        if freeformType == null then { }
        else
          let r = mergeDefinitions prefix freeformType freeDefs; in
          if r.isDefined then r.mergedValue else { };
      config = free // declared;

      # definitions that no option declares (where there is no freeformType)
      undeclaredIn =
        loc: decls: defs:
        if isOption decls then [ ]
        else
          let
            names = unique (concatMap (d: if b.isAttrs d.value then b.attrNames d.value else [ ]) (pushed defs));
            unknown = b.filter (n: !(decls ? ${n}) && n != "_module") names;
          in
          map (n: showLoc (loc ++ [ n ])) unknown
          ++ concatMap (n: undeclaredIn (loc ++ [ n ]) decls.${n} (subDefs n defs)) (b.attrNames decls);
    in
    {
      inherit config options;
      undeclared = if freeformType == null then undeclaredIn prefix options topDefs else [ ];
    };

  # sources and package metadata, as far as package.nix and the flake use them; the
  # source is not copied into a store here (there is none), just described
  cleanSourceWith =
    { src, filter ? (_: _: true), name ? "source" }:
    { inherit name filter; outPath = toString src; _isCleanSource = true; };
  # lib.fileset, as far as package.nix uses it: a file set is a predicate over
  # (absolute path, type); toSource describes the source instead of copying it
  fileset =
    let
      mk = contains: { _type = "fileset"; inherit contains; };
      coerce =
        x:
        if b.isAttrs x && (x._type or "") == "fileset" then x
        else
          let p = toString x; in
          mk (path: _: path == p || hasPrefix (p + "/") path);
      unions = xs: let sets = map coerce xs; in mk (path: type: b.any (s: s.contains path type) sets);
    in
    {
      inherit unions;
      union = x: y: unions [ x y ];
      maybeMissing = coerce;
      difference =
        x: y:
        let l = coerce x; r = coerce y; in
        mk (path: type: l.contains path type && !(r.contains path type));
      fileFilter =
        pred: root:
        let r = toString root; in
        mk (path: type:
          hasPrefix (r + "/") path && type == "regular"
          && pred { name = baseNameOf path; inherit type; hasExt = ext: hasSuffix ".${ext}" (baseNameOf path); });
      toSource =
        { root, fileset }:
        let f = coerce fileset; in
        { name = "source"; outPath = toString root; filter = path: type: f.contains (toString path) type; _isFileset = true; };
    };
  platforms = {
    linux = [ "x86_64-linux" "aarch64-linux" ];
    darwin = [ "x86_64-darwin" "aarch64-darwin" ];
  };
  licenses.mit = { spdxId = "MIT"; shortName = "mit"; };

  lib = {
    inherit cleanSourceWith fileset platforms licenses;
    inherit
      id const flip optional optionals optionalString optionalAttrs concatMap flatten last
      imap0 imap1 unique toList nameValuePair mapAttrsToList mapAttrs' filterAttrs genAttrs
      attrByPath setAttrByPath recursiveUpdate hasPrefix hasSuffix hasInfix removePrefix
      removeSuffix splitString concatStringsSep concatMapStringsSep concatStrings escapeShellArg
      escapeShellArgs boolToString isDerivation isFunction isStringLike any all elem
      versionAtLeast literalExpression literalMD mdDoc mkIf mkMerge mkOverride mkOptionDefault
      mkDefault mkImageMediaOverride mkForce mkVMOverride mkOrder mkBefore mkAfter mkOption
      isOption mkEnableOption mkPackageOption mkOptionType mergeEqualOption mergeOneOption
      types evalModules;
    inherit (b) attrNames attrValues elemAt filter foldl' head tail length listToAttrs mapAttrs
      match replaceStrings substring stringLength toJSON fromJSON isAttrs isList isString isBool isInt;
    strings = { inherit hasPrefix hasSuffix hasInfix removePrefix removeSuffix splitString concatStringsSep concatMapStringsSep escapeShellArg; };
    attrsets = { inherit mapAttrsToList mapAttrs' filterAttrs genAttrs attrByPath setAttrByPath recursiveUpdate nameValuePair; };
    lists = { inherit optional optionals concatMap flatten last imap0 imap1 unique toList; };
    trivial = { inherit id const flip boolToString; };
    modules = { inherit mkIf mkMerge mkOverride mkDefault mkForce mkOrder mkBefore mkAfter; };
    options = { inherit mkOption mkEnableOption mkPackageOption literalExpression; };
  };
in
lib
