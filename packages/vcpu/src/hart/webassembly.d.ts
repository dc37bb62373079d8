// The WebAssembly JS API as Node 24 provides it. TypeScript ships these
// types only in lib.dom / lib.webworker, which this repo does not load
// (lib ES2024 + @types/node), so the subset used here is declared once,
// globally (WebAssembly JS API spec, https://webassembly.github.io/spec/js-api/).
declare global {
  namespace WebAssembly {
    interface MemoryDescriptor { initial: number; maximum?: number; shared?: boolean }
    class Memory {
      constructor(descriptor: MemoryDescriptor);
      readonly buffer: ArrayBuffer | SharedArrayBuffer;
      grow(delta: number): number;
    }
    class Module {
      constructor(bytes: BufferSource);
      static exports(module: Module): { name: string; kind: string }[];
      static imports(module: Module): { module: string; name: string; kind: string }[];
    }
    interface TableDescriptor { element: 'anyfunc' | 'externref'; initial: number; maximum?: number }
    class Table {
      constructor(descriptor: TableDescriptor);
      readonly length: number;
      get(index: number): ExportValue | null;
      set(index: number, value: ExportValue | null): void;
      grow(delta: number): number;
    }
    type ExportValue = ((...args: never[]) => unknown) | Global | Memory | Table;
    type Exports = Record<string, ExportValue>;
    type ImportValue = ((...args: never[]) => unknown) | Global | Memory | Table | number | bigint;
    type Imports = Record<string, Record<string, ImportValue>>;
    class Instance {
      constructor(module: Module, imports?: Imports);
      readonly exports: Exports;
    }
    interface GlobalDescriptor { value: string; mutable?: boolean }
    class Global {
      constructor(descriptor: GlobalDescriptor, v?: number | bigint);
      value: number | bigint;
    }
    interface WebAssemblyInstantiatedSource { instance: Instance; module: Module }
    function instantiate(bytes: BufferSource, imports?: Imports): Promise<WebAssemblyInstantiatedSource>;
    function instantiate(module: Module, imports?: Imports): Promise<Instance>;
    function compile(bytes: BufferSource): Promise<Module>;
    function validate(bytes: BufferSource): boolean;
  }
}
export {};
